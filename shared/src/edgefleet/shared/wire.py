"""Bytes at the MQTT boundary: the versioned envelope and the binary chunk frame.

Every JSON message travels as ``{"v": 2, "kind": "<kind>", "body": {...}}``. Artifact chunks
travel as a binary frame (magic, header length, JSON header, raw bytes) so they cost no base64.

Compatibility rule between wire versions: a peer reads every version in
``SUPPORTED_SCHEMA_VERSIONS`` (the current one and the one before) and writes to each peer the
version that peer speaks, which is the version of the envelopes it sends. v2 only adds optional
fields to ``state`` (``last_outcome``, ``progress``, ``seq``); every other body is the same in
v1 and v2, so a v1 body parses as v2, and a v2 message without the new fields writes as v1.
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

SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = (1, 2)
# Fields a v1 reader does not know, per message type: left out when writing v1.
_NEW_IN_V2: dict[type[WireModel], frozenset[str]] = {
    DeviceState: frozenset({"last_outcome", "progress", "seq"}),
}

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


def encode(message: WireModel, *, version: int = SCHEMA_VERSION) -> bytes:
    """Wrap ``message`` in the envelope of wire ``version`` and return UTF-8 JSON bytes.

    Raises:
        TypeError: ``message`` is not a wire message.
        ValueError: ``version`` is not one this side writes.
    """
    kind = _KIND_OF.get(type(message))
    if kind is None:
        raise TypeError(f"{type(message).__name__} is not a wire message")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise ValueError(f"cannot write wire version {version}: {list(SUPPORTED_SCHEMA_VERSIONS)}")
    exclude = _NEW_IN_V2.get(type(message)) if version < 2 else None
    body = message.model_dump_json(exclude=set(exclude) if exclude else None)
    return f'{{"v":{version},"kind":"{kind}","body":{body}}}'.encode()


def _open_envelope(payload: bytes, max_bytes: int) -> tuple[int, str, Any]:
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
    return version, kind, envelope["body"]


def decode(payload: bytes, expected: type[M], *, max_bytes: int | None = None) -> M:
    """Parse an envelope that must hold a message of type ``expected``.

    Raises:
        UnsupportedSchemaError: the envelope's version is not spoken here.
        WireFormatError: anything else wrong with the payload (size, JSON, kind, fields).
    """
    return decode_versioned(payload, expected, max_bytes=max_bytes)[1]


def decode_versioned(
    payload: bytes, expected: type[M], *, max_bytes: int | None = None
) -> tuple[int, M]:
    """:func:`decode`, also returning the envelope's wire version (what the sender speaks).

    Raises:
        UnsupportedSchemaError, WireFormatError: as :func:`decode`.
    """
    version, kind, body = _open_envelope(payload, max_bytes or DEFAULT_LIMITS.max_message_bytes)
    expected_kind = _KIND_OF.get(expected)
    if kind != expected_kind:
        raise WireFormatError(f"expected a {expected_kind!r} message, got {kind!r}", kind=kind)
    if version < 2 and isinstance(body, dict) and _NEW_IN_V2.get(expected, frozenset()) & set(body):
        raise WireFormatError(f"v1 {kind} message carries v2 fields", kind=kind)
    try:
        return version, expected.model_validate(body)
    except ValidationError as e:
        raise WireFormatError(f"invalid {kind} message: {e}", kind=kind) from e


def decode_any(payload: bytes, *, max_bytes: int | None = None) -> WireModel:
    """Parse an envelope of any known kind.

    Raises:
        UnsupportedSchemaError: the envelope's version is not spoken here.
        WireFormatError: anything else wrong with the payload.
    """
    _, kind, body = _open_envelope(payload, max_bytes or DEFAULT_LIMITS.max_message_bytes)
    try:
        return KINDS[kind].model_validate(body)
    except ValidationError as e:
        raise WireFormatError(f"invalid {kind} message: {e}", kind=kind) from e


# The chunk frame did not change in v2. Every device fetching an artifact reads the same chunk
# topic, whatever wire version it speaks, so frames are written in the oldest version read.
CHUNK_FRAME_VERSION = 1


class ChunkHeader(BaseModel):
    """Header of one binary chunk frame."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: int = CHUNK_FRAME_VERSION
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
