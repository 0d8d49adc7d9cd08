"""Bytes at the MQTT boundary: the versioned envelope and the binary chunk frame.

Every JSON message travels as ``{"v": 1, "kind": "<kind>", "body": {...}}``. Artifact chunks
travel as a binary frame (magic, header length, JSON header, raw bytes) so they cost no base64.
"""

from __future__ import annotations

import json
import struct
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.shared.errors import UnsupportedSchemaError, WireFormatError
from edgefleet.shared.limits import DEFAULT_LIMITS
from edgefleet.shared.manifest import SignedManifest
from edgefleet.shared.messages import (
    ChunkRequest,
    Command,
    DeviceState,
    Event,
    Hello,
    Telemetry,
    WireModel,
)
from edgefleet.shared.topics import Sha256Hex

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)

KINDS: dict[str, type[WireModel]] = {
    "hello": Hello,
    "state": DeviceState,
    "telemetry": Telemetry,
    "event": Event,
    "fetch": ChunkRequest,
    "command": Command,
    "manifest": SignedManifest,
}
_KIND_OF: dict[type[WireModel], str] = {model: kind for kind, model in KINDS.items()}

M = TypeVar("M", bound=WireModel)


def encode(message: WireModel) -> bytes:
    """Wrap ``message`` in the versioned envelope and return UTF-8 JSON bytes."""
    kind = _KIND_OF.get(type(message))
    if kind is None:
        raise TypeError(f"{type(message).__name__} is not a wire message")
    body = message.model_dump_json()
    return f'{{"v":{SCHEMA_VERSION},"kind":"{kind}","body":{body}}}'.encode()


def _open_envelope(payload: bytes, max_bytes: int) -> tuple[str, Any]:
    if len(payload) > max_bytes:
        raise WireFormatError(f"payload of {len(payload)} bytes exceeds {max_bytes}")
    try:
        envelope = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireFormatError(f"payload is not JSON: {e}") from e
    if not isinstance(envelope, dict) or set(envelope) != {"v", "kind", "body"}:
        raise WireFormatError("payload is not an envelope {v, kind, body}")
    version = envelope["v"]
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise UnsupportedSchemaError(version, SUPPORTED_SCHEMA_VERSIONS)
    kind = envelope["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise WireFormatError(f"unknown message kind {kind!r}")
    return kind, envelope["body"]


def decode(payload: bytes, expected: type[M], *, max_bytes: int | None = None) -> M:
    """Parse an envelope that must hold a message of type ``expected``.

    Raises:
        UnsupportedSchemaError: the envelope's version is not spoken here.
        WireFormatError: anything else wrong with the payload (size, JSON, kind, fields).
    """
    kind, body = _open_envelope(payload, max_bytes or DEFAULT_LIMITS.max_message_bytes)
    expected_kind = _KIND_OF.get(expected)
    if kind != expected_kind:
        raise WireFormatError(f"expected a {expected_kind!r} message, got {kind!r}", kind=kind)
    try:
        return expected.model_validate(body)
    except ValidationError as e:
        raise WireFormatError(f"invalid {kind} message: {e}", kind=kind) from e


def decode_any(payload: bytes, *, max_bytes: int | None = None) -> WireModel:
    """Parse an envelope of any known kind.

    Raises:
        UnsupportedSchemaError: the envelope's version is not spoken here.
        WireFormatError: anything else wrong with the payload.
    """
    kind, body = _open_envelope(payload, max_bytes or DEFAULT_LIMITS.max_message_bytes)
    try:
        return KINDS[kind].model_validate(body)
    except ValidationError as e:
        raise WireFormatError(f"invalid {kind} message: {e}", kind=kind) from e


class ChunkHeader(BaseModel):
    """Header of one binary chunk frame."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: int = SCHEMA_VERSION
    sha256: Sha256Hex = Field(description="sha256 of the whole artifact")
    index: int = Field(ge=0)
    count: int = Field(ge=1)
    chunk_sha256: Sha256Hex


CHUNK_MAGIC = b"EFC1"
_HEADER_LEN = struct.Struct(">I")
_MAX_HEADER = 4096


def encode_chunk_frame(header: ChunkHeader, data: bytes) -> bytes:
    """``EFC1`` + big-endian u32 header length + JSON header + raw chunk bytes."""
    head = header.model_dump_json().encode()
    return CHUNK_MAGIC + _HEADER_LEN.pack(len(head)) + head + data


def decode_chunk_frame(payload: bytes) -> tuple[ChunkHeader, bytes]:
    """Split a chunk frame. The chunk's hash is checked by the reassembler, not here.

    Raises:
        WireFormatError: not a chunk frame, or a malformed header.
    """
    prefix = len(CHUNK_MAGIC) + _HEADER_LEN.size
    if len(payload) < prefix or not payload.startswith(CHUNK_MAGIC):
        raise WireFormatError("payload is not a chunk frame", kind="chunk")
    (head_len,) = _HEADER_LEN.unpack_from(payload, len(CHUNK_MAGIC))
    if head_len > _MAX_HEADER or prefix + head_len > len(payload):
        raise WireFormatError(f"chunk frame header length {head_len} is invalid", kind="chunk")
    try:
        header = ChunkHeader.model_validate_json(payload[prefix : prefix + head_len])
    except ValidationError as e:
        raise WireFormatError(f"invalid chunk header: {e}", kind="chunk") from e
    if header.v not in SUPPORTED_SCHEMA_VERSIONS:
        raise UnsupportedSchemaError(header.v, SUPPORTED_SCHEMA_VERSIONS)
    if header.index >= header.count:
        raise WireFormatError(f"chunk index {header.index} >= count {header.count}", kind="chunk")
    return header, payload[prefix + head_len :]
