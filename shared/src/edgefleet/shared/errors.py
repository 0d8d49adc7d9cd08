"""Exception hierarchy of the wire contract.

Two subtrees under one root: integrity failures (never retried, never lead to a swap) and
transport failures (retried with backoff). Malformed payloads get their own branch: they are
logged and dropped. Each leaf carries the figures that explain it.
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Root of every error raised by edgefleet code."""


class WireFormatError(EdgefleetError):
    """A payload is not a valid edgefleet message (bad JSON, wrong fields, wrong kind)."""

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


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
    """The manifest signature does not verify with the pinned key."""


class UnknownKeyError(IntegrityError):
    """The manifest was signed by a key this side does not trust."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"manifest signed by unknown key {key_id!r}")
        self.key_id = key_id


class ExpiredManifestError(IntegrityError):
    """The manifest's expiry lies in the past (freeze attack or a stale retained message)."""

    def __init__(self, expires_at: str, now: str) -> None:
        super().__init__(f"manifest expired at {expires_at} (now {now})")
        self.expires_at = expires_at
        self.now = now


class ReplayError(IntegrityError):
    """The manifest's serial is not above the last accepted one (rollback or replay)."""

    def __init__(self, serial: int, last_serial: int) -> None:
        super().__init__(
            f"manifest serial {serial} is not above last accepted serial {last_serial}"
        )
        self.serial = serial
        self.last_serial = last_serial


class WrongDeviceError(IntegrityError):
    """The manifest is addressed to another device."""

    def __init__(self, manifest_device: str, this_device: str) -> None:
        super().__init__(f"manifest is for device {manifest_device!r}, not {this_device!r}")
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
