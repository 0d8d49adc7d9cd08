"""Bytes at the MQTT boundary: the versioned envelope and the binary chunk frame.

Every JSON message travels as ``{"v": 2, "kind": "<kind>", "body": {...}}``. Artifact chunks
travel as a binary frame (magic, header length, JSON header, raw bytes) so they cost no base64.

Compatibility rule between wire versions: a peer reads every version in
``SUPPORTED_SCHEMA_VERSIONS`` (the current one and the one before) and writes to each peer the
version that peer speaks, which is the version of the envelopes it sends. v2 adds optional
fields to ``state`` (``last_outcome``, ``progress``, ``seq``, ``desired_error``), to
``command`` (``serial``, ``expires_at``) and to each model's ``telemetry`` figures
(``latency_hist``, the window's latency histogram; a v1 agent's summaries still ingest), the
``signed_command`` kind (a v2 device obeys only signed commands; a v1 device, one release
behind, gets the unsigned v1 command it knows) and manifest schema 2 (golden pairs as a
fetched file, a latency policy; v1 devices get schema 1).
Every other body is the same in v1 and v2, so a v1 body parses as v2, and a v2 message without
the new fields writes as v1.

Nothing is parsed before it is bounded: size, nesting depth and integer length are checked on the
raw bytes, then every field against its type (:mod:`edgefleet.shared.bounds`). Every refusal is
a :class:`WireFormatError` naming what was wrong, and nothing else escapes a decoder.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, create_model

from edgefleet.shared.bounds import ChunkCount, ChunkIndex
from edgefleet.shared.errors import (
    MalformedPayloadError,
    PayloadTooDeepError,
    PayloadTooLargeError,
    UnsupportedSchemaError,
    WireFormatError,
    field_error,
)
from edgefleet.shared.limits import DEFAULT_LIMITS
from edgefleet.shared.manifest import SignedManifest
from edgefleet.shared.messages import (
    ChunkRequest,
    Command,
    DeviceState,
    Event,
    Hello,
    SignedCommand,
    Telemetry,
    WireModel,
)
from edgefleet.shared.topics import Sha256Hex

SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = (1, 2)
# Fields a v1 reader does not know, per message type: left out when writing v1.
_NEW_IN_V2: dict[type[WireModel], frozenset[str]] = {
    DeviceState: frozenset({"last_outcome", "progress", "seq", "desired_error"}),
    Command: frozenset({"serial", "expires_at"}),
}

_NESTED_NEW_IN_V2: dict[type[WireModel], dict[str, Any]] = {
    Telemetry: {"models": {"__all__": {"latency_hist"}}},
}

KINDS: dict[str, type[WireModel]] = {
    "hello": Hello,
    "state": DeviceState,
    "telemetry": Telemetry,
    "event": Event,
    "fetch": ChunkRequest,
    "command": Command,
    "manifest": SignedManifest,
    "signed_command": SignedCommand,  # wire v2 only
}
_KINDS_FROM_V2 = frozenset({"signed_command"})
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
    if version < 2 and kind in _KINDS_FROM_V2:
        raise ValueError(f"a {kind!r} message does not exist in wire v{version}")
    exclude: Any = None
    if version < 2:
        exclude = set(_NEW_IN_V2.get(type(message), ())) or _NESTED_NEW_IN_V2.get(type(message))
    body = message.model_dump_json(exclude=exclude)
    return f'{{"v":{version},"kind":"{kind}","body":{body}}}'.encode()


# A JSON string, closing quote optional so an unterminated one ends the scan in linear time.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_OPENERS = frozenset(b"[{")


def _openers(data: bytes) -> int:
    return data.count(b"[") + data.count(b"{")


def nesting_depth_exceeds(payload: bytes, limit: int) -> bool:
    """Whether JSON ``payload`` nests arrays and objects deeper than ``limit``, without parsing.

    Brackets inside strings do not count. Linear in ``len(payload)``; stops at the first level
    past ``limit``. A payload with no more than ``limit`` opening brackets costs two counts.
    """
    if _openers(payload) <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", payload).translate(None, _NOT_BRACKETS)
    if _openers(brackets) <= limit:
        return False
    depth = 0
    for byte in brackets:
        depth += 1 if byte in _OPENERS else -1
        if depth > limit:
            return True
    return False


def parse_json(payload: bytes, *, max_bytes: int, kind: str | None = None) -> Any:
    """UTF-8 JSON ``payload`` as Python values, once it is known to be bounded.

    Raises:
        PayloadTooLargeError: longer than ``max_bytes``.
        PayloadTooDeepError: nested deeper than the wire's depth limit.
        MalformedPayloadError: not UTF-8, not JSON, or an integer literal too long.
    """
    limits = DEFAULT_LIMITS
    if len(payload) > max_bytes:
        raise PayloadTooLargeError(len(payload), max_bytes, kind=kind)
    if nesting_depth_exceeds(payload, limits.max_json_depth):
        raise PayloadTooDeepError(limits.max_json_depth, kind=kind)

    def bounded_int(literal: str) -> int:
        if len(literal) > limits.max_int_digits:
            raise MalformedPayloadError(
                f"integer literal of {len(literal)} digits (at most {limits.max_int_digits})",
                kind=kind,
            )
        return int(literal)

    try:
        return json.loads(payload.decode("utf-8"), parse_int=bounded_int)
    except UnicodeDecodeError as e:
        raise MalformedPayloadError(f"not UTF-8 ({e.reason} at byte {e.start})", kind=kind) from e
    except RecursionError as e:  # the depth check makes this unreachable; kept as a backstop
        raise PayloadTooDeepError(limits.max_json_depth, kind=kind) from e
    except ValueError as e:  # JSONDecodeError, and int() refusing a literal it cannot convert
        raise MalformedPayloadError(f"not JSON ({e})", kind=kind) from e


def _open_envelope(payload: bytes, max_bytes: int) -> tuple[int, str, Any]:
    envelope = parse_json(payload, max_bytes=max_bytes)
    if not isinstance(envelope, dict) or set(envelope) != {"v", "kind", "body"}:
        raise WireFormatError("payload is not an envelope {v, kind, body}")
    version = envelope["v"]
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise UnsupportedSchemaError(version, SUPPORTED_SCHEMA_VERSIONS)
    kind = envelope["kind"]
    if not isinstance(kind, str) or kind not in KINDS or (version < 2 and kind in _KINDS_FROM_V2):
        raise WireFormatError(f"unknown message kind {kind!r} in wire v{version}")
    return version, kind, envelope["body"]


def envelope_kind(payload: bytes, *, max_bytes: int | None = None) -> str:
    """The kind of a bounded, well-formed envelope, without validating its body.

    Raises:
        UnsupportedSchemaError, WireFormatError: as :func:`decode`.
    """
    return _open_envelope(payload, max_bytes or DEFAULT_LIMITS.max_message_bytes)[1]


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
    max_bytes = max_bytes or DEFAULT_LIMITS.max_message_bytes
    fast = _FAST_ENVELOPES.get(expected)
    if fast is not None and len(payload) <= max_bytes:
        decoded = _decode_fast(payload, fast)
        if decoded is not None:
            return decoded  # type: ignore[return-value]  # the envelope of ``expected``
    version, kind, body = _open_envelope(payload, max_bytes)
    expected_kind = _KIND_OF.get(expected)
    if kind != expected_kind:
        raise WireFormatError(f"expected a {expected_kind!r} message, got {kind!r}", kind=kind)
    if version < 2 and isinstance(body, dict) and _NEW_IN_V2.get(expected, frozenset()) & set(body):
        raise WireFormatError(f"v1 {kind} message carries v2 fields", kind=kind)
    try:
        return version, expected.model_validate(body)
    except ValidationError as e:
        raise field_error(e, kind=kind, data=body) from e


class _Envelope(BaseModel):
    """A whole envelope of one kind, validated from JSON in one pass (see :func:`_decode_fast`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Annotated[int, Strict()]
    kind: str


def _fast_envelope(model: type[WireModel]) -> type[_Envelope]:
    return create_model(
        f"{model.__name__}Envelope",
        __base__=_Envelope,
        kind=(Literal[_KIND_OF[model]], ...),
        body=(model, ...),
    )


# The kinds devices send all the time. Their envelopes are validated from the raw JSON in one
# pass; anything the fast path does not accept as it stands goes through the general path,
# which accepts and refuses exactly what it always did and says why.
_FAST_ENVELOPES: dict[type[WireModel], type[_Envelope]] = {
    Telemetry: _fast_envelope(Telemetry),
    DeviceState: _fast_envelope(DeviceState),
    Event: _fast_envelope(Event),
}
_LONG_INTEGER = re.compile(rb"[0-9]{%d}" % (DEFAULT_LIMITS.max_int_digits + 1))


def _decode_fast(payload: bytes, envelope: type[_Envelope]) -> tuple[int, WireModel] | None:
    """``(version, body)`` of a bounded, valid envelope whose body has no field of a later
    wire version than its own; None for anything else (the general path decides)."""
    if nesting_depth_exceeds(payload, DEFAULT_LIMITS.max_json_depth) or _LONG_INTEGER.search(
        payload
    ):
        return None
    try:
        parsed = envelope.model_validate_json(payload)
    except ValidationError:
        return None
    body: WireModel = parsed.body  # type: ignore[attr-defined]  # every fast envelope has one
    if parsed.v not in SUPPORTED_SCHEMA_VERSIONS:
        return None
    if parsed.v < 2 and _NEW_IN_V2.get(type(body), frozenset()) & body.model_fields_set:
        return None
    return parsed.v, body


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
        raise field_error(e, kind=kind, data=body) from e


# The chunk frame did not change in v2. Every device fetching an artifact reads the same chunk
# topic, whatever wire version it speaks, so frames are written in the oldest version read.
CHUNK_FRAME_VERSION = 1


class ChunkHeader(WireModel):
    """Header of one binary chunk frame."""

    v: int = CHUNK_FRAME_VERSION  # any integer: an unknown one is UnsupportedSchemaError
    sha256: Sha256Hex = Field(description="sha256 of the whole artifact")
    index: ChunkIndex
    count: ChunkCount
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
        UnsupportedSchemaError: the header's version is not spoken here.
        WireFormatError: not a chunk frame, or a malformed header (one of its subclasses
            when the header is not bounded JSON or a field is invalid).
    """
    prefix = len(CHUNK_MAGIC) + _HEADER_LEN.size
    if len(payload) < prefix or not payload.startswith(CHUNK_MAGIC):
        raise WireFormatError("payload is not a chunk frame", kind="chunk")
    (head_len,) = _HEADER_LEN.unpack_from(payload, len(CHUNK_MAGIC))
    if head_len > _MAX_HEADER or prefix + head_len > len(payload):
        raise WireFormatError(f"chunk frame header length {head_len} is invalid", kind="chunk")
    raw = parse_json(payload[prefix : prefix + head_len], max_bytes=_MAX_HEADER, kind="chunk")
    try:
        header = ChunkHeader.model_validate(raw)
    except ValidationError as e:
        raise field_error(e, kind="chunk", data=raw) from e
    if header.v not in SUPPORTED_SCHEMA_VERSIONS:
        raise UnsupportedSchemaError(header.v, SUPPORTED_SCHEMA_VERSIONS)
    if header.index >= header.count:
        raise WireFormatError(f"chunk index {header.index} >= count {header.count}", kind="chunk")
    return header, payload[prefix + head_len :]
