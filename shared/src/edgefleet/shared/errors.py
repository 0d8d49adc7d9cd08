"""Exception hierarchy of the wire contract.

Two subtrees under one root: integrity failures (never retried, never lead to a swap) and
transport failures (retried with backoff). Malformed payloads get their own branch: they are
logged and dropped. Each leaf carries the figures that explain it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class EdgefleetError(Exception):
    """Root of every error raised by edgefleet code."""


class WireFormatError(EdgefleetError):
    """A payload is not a valid edgefleet message (bad JSON, wrong fields, wrong kind)."""

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class PayloadTooLargeError(WireFormatError):
    """A payload is larger than the receiver reads; refused before it is parsed."""

    def __init__(self, size: int, limit: int, *, kind: str | None = None) -> None:
        super().__init__(f"payload of {size} bytes exceeds {limit}", kind=kind)
        self.size = size
        self.limit = limit


class PayloadTooDeepError(WireFormatError):
    """A payload nests arrays and objects deeper than any message does; refused before parsing."""

    def __init__(self, limit: int, *, kind: str | None = None) -> None:
        super().__init__(f"payload nests deeper than {limit} levels", kind=kind)
        self.limit = limit


class MalformedPayloadError(WireFormatError):
    """A payload is not UTF-8 JSON, or holds a number literal too long to be any field's value."""

    def __init__(self, reason: str, *, kind: str | None = None) -> None:
        super().__init__(f"payload is not acceptable JSON: {reason}", kind=kind)
        self.reason = reason


class InvalidFieldError(WireFormatError):
    """A field of a message is missing, unknown, of the wrong type or inconsistent.

    ``field`` is the dotted path of the first offending field inside the message body
    (``hardware.ram_bytes``, ``models.0.requests``; empty for the message as a whole),
    ``code`` pydantic's error type, ``reason`` what is wrong; ``errors`` counts every problem.
    """

    def __init__(
        self, *, kind: str | None, field: str, reason: str, code: str, errors: int = 1
    ) -> None:
        more = f" (and {errors - 1} more)" if errors > 1 else ""
        where = field or "message"
        super().__init__(f"invalid {kind or 'wire'} {where}: {reason}{more}", kind=kind)
        self.field = field
        self.reason = reason
        self.code = code
        self.errors = errors


class FieldBoundError(InvalidFieldError):
    """A field's value is outside its bound: range, finiteness, length, count or storability."""


# pydantic error types that mean "outside the bound", as opposed to "wrong shape".
_BOUND_CODES = frozenset({
    "greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number",
    "too_short", "too_long", "string_too_short", "string_too_long", "int_parsing_size",
    "string_unstorable", "timestamp_range",
})  # fmt: skip


def field_error(
    error: ValidationError, *, kind: str | None, data: object = None
) -> InvalidFieldError:
    """The :class:`InvalidFieldError` (or :class:`FieldBoundError`) naming ``error``'s first field.

    Bound errors win over shape errors, so a message with both names the bound it breaks.
    ``data`` is the input that was validated: with it, union member tags (``dict``, ``float``)
    are left out of the path.
    """
    details = error.errors(include_url=False, include_input=False)
    first = next((d for d in details if d["type"] in _BOUND_CODES), details[0])
    field = ".".join(_shorten(str(part), 64) for part in _field_path(first["loc"], data))
    cls = FieldBoundError if first["type"] in _BOUND_CODES else InvalidFieldError
    return cls(
        kind=kind,
        field=_shorten(field, 256),
        reason=_shorten(first["msg"], 512),
        code=first["type"],
        errors=len(details),
    )


def _field_path(loc: tuple[int | str, ...], data: object) -> list[int | str]:
    # pydantic puts the member of a union (JsonValue's "dict", "float") into the location; such a
    # part names the type of the value it stands at and is none of its keys.
    path: list[int | str] = []
    node: Any = data
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list | tuple) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif node is not None and part == type(node).__name__:
            continue
        else:
            node = None
        path.append(part)
    return path


def _shorten(text: str, limit: int) -> str:
    # A path may hold a sender's dict key: keep what is logged and counted small.
    return text if len(text) <= limit else text[: limit - 1] + "…"


class UnsupportedSchemaError(WireFormatError):
    """A payload carries a schema version this code does not speak."""

    def __init__(self, version: object, supported: tuple[int, ...]) -> None:
        super().__init__(f"unsupported schema version {version!r}; supported: {list(supported)}")
        self.version = version
        self.supported = supported


class InvalidTopicError(EdgefleetError, ValueError):
    """A topic or a topic component (device id, sha256) is not acceptable."""


class IntegrityError(EdgefleetError):
    """Something failed verification. Never retried; never leads to a swap."""


class SignatureError(IntegrityError):
    """The manifest (or command) signature does not verify with the pinned key."""


class UnsignedError(IntegrityError):
    """A message that must be signed (a command, wire v2) arrived without a signature."""


class UnknownKeyError(IntegrityError):
    """The manifest (or command) was signed by a key this side does not trust."""

    def __init__(self, key_id: str, *, what: str = "manifest") -> None:
        super().__init__(f"{what} signed by unknown key {key_id!r}")
        self.key_id = key_id


class ExpiredManifestError(IntegrityError):
    """The manifest's (or command's) expiry lies in the past (freeze attack, stale message)."""

    def __init__(self, expires_at: str, now: str, *, what: str = "manifest") -> None:
        super().__init__(f"{what} expired at {expires_at} (now {now})")
        self.expires_at = expires_at
        self.now = now


class ReplayError(IntegrityError):
    """The serial is not above the last accepted one (rollback or replay)."""

    def __init__(self, serial: int, last_serial: int, *, what: str = "manifest") -> None:
        super().__init__(f"{what} serial {serial} is not above last accepted serial {last_serial}")
        self.serial = serial
        self.last_serial = last_serial


class WrongDeviceError(IntegrityError):
    """The manifest (or command) is addressed to another device."""

    def __init__(self, manifest_device: str, this_device: str, *, what: str = "manifest") -> None:
        super().__init__(f"{what} is for device {manifest_device!r}, not {this_device!r}")
        self.manifest_device = manifest_device
        self.this_device = this_device


class HashMismatchError(IntegrityError):
    """Bytes do not hash to what the manifest or chunk list promised."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: sha256 {actual} does not match expected {expected}")
        self.what = what
        self.expected = expected
        self.actual = actual


class LengthMismatchError(IntegrityError):
    """Bytes are longer or shorter than promised."""

    def __init__(self, what: str, expected: int, actual: int) -> None:
        super().__init__(f"{what}: {actual} bytes, expected {expected}")
        self.what = what
        self.expected = expected
        self.actual = actual


class TransportError(EdgefleetError):
    """A network or broker operation failed; retry with backoff."""


class DownloadError(TransportError):
    """Fetching an artifact failed for a reason that may pass."""
