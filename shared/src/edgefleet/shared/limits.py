"""Size bounds of the wire contract, in one settings object (sizes in bytes).

Field ranges and lengths are types, in :mod:`edgefleet.shared.bounds`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

KIB = 1024
MIB = 1024 * KIB


class WireLimits(BaseModel):
    """Every size bound the contract enforces, with defaults that suit a broker capped at 1 MB."""

    model_config = ConfigDict(frozen=True)

    max_message_bytes: int = Field(default=1 * MIB, gt=0)
    max_chunk_bytes: int = Field(default=512 * KIB, gt=0)
    default_chunk_bytes: int = Field(default=128 * KIB, gt=0)
    max_artifact_bytes: int = Field(default=512 * MIB, gt=0)
    max_chunks: int = Field(default=65536, gt=0)
    max_golden_pairs: int = Field(default=64, gt=0)
    # A chunk index (manifest schema 2) is a file of 32-byte chunk digests named by its own
    # inline chunk list, at most this long: a manifest's size is bounded by a constant however
    # large the file it indexes (16 chunks of 128 KiB index 65536 chunks, an 8 GiB artifact).
    max_index_chunks: int = Field(default=16, gt=0)
    # Checked before parsing: the deepest message (a manifest's golden tensors) nests 9 levels.
    max_json_depth: int = Field(default=32, gt=0)
    # Longer integer literals are refused before conversion (CPython's default limit, which the
    # environment could otherwise lift); no field holds more than 19 digits.
    max_int_digits: int = Field(default=4300, gt=0)


DEFAULT_LIMITS = WireLimits()
