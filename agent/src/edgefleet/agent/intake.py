"""What one desired-state payload is, before anything acts on it (pure: no I/O, no state).

A payload is accepted (verified, to apply), refused (an event; and a final outcome only when
the refusal provably concerns a new serial of ours: an expired manifest with a good
signature), dropped (too large or malformed: no serial to report an outcome for, so the state
names the payload's digest instead), or ignored (cleared, or a redelivery of what was already
handled).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from edgefleet.shared.ed25519 import PublicKey
from edgefleet.shared.errors import (
    ExpiredManifestError,
    IntegrityError,
    ReplayError,
    WireFormatError,
)
from edgefleet.shared.manifest import Manifest, SignedManifest
from edgefleet.shared.signing import VerifiedManifest, canonical_json, verify_manifest
from edgefleet.shared.wire import decode


def manifest_digest(signed: SignedManifest) -> str:
    """sha256 of the signed manifest's canonical JSON: tells a redelivery from a replay."""
    return hashlib.sha256(canonical_json(signed.model_dump(mode="json"))).hexdigest()


@dataclass(frozen=True, slots=True)
class Accepted:
    verified: VerifiedManifest
    signed: SignedManifest
    digest: str


@dataclass(frozen=True, slots=True)
class Refused:
    """``final`` is the manifest whose serial this refusal ends (else: an event only)."""

    reason: str
    digest: str | None = None
    final: Manifest | None = None
    figures: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Ignored:
    why: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """A payload that is not a signed manifest at all (oversize, not JSON, wrong shape)."""

    reason: str
    payload_sha256: str
    size: int


def read_desired(
    payload: bytes,
    controller_key: PublicKey,
    *,
    device_id: str,
    last_serial: int,
    last_digest: str | None,
    now: datetime | None = None,
    max_bytes: int | None = None,
) -> Accepted | Refused | Ignored | Dropped:
    """Decode and verify a desired-state payload against what the device last accepted;
    a payload over ``max_bytes`` (default: the wire's limit) is dropped unread."""
    if not payload:
        return Ignored("a cleared retained message")
    try:
        signed = decode(payload, SignedManifest, max_bytes=max_bytes)
    except WireFormatError as e:
        reason = f"malformed desired-state payload: {type(e).__name__}: {e}"
        return Dropped(reason[:1024], hashlib.sha256(payload).hexdigest(), len(payload))
    digest = manifest_digest(signed)
    try:
        verified = verify_manifest(
            signed, controller_key, device_id=device_id, last_serial=last_serial, now=now
        )
    except (ReplayError, ExpiredManifestError) as e:
        if digest == last_digest:
            return Ignored("desired state redelivered; already handled")
        if isinstance(e, ReplayError):
            figures = {"serial": float(e.serial), "last_serial": float(e.last_serial)}
            return Refused(str(e), digest, figures=figures)
        return _expired(signed, digest, e, last_serial)
    except (IntegrityError, WireFormatError) as e:
        # no outcome: nothing proves this payload is about a serial of ours
        return Refused(f"{type(e).__name__}: {e}", digest)
    return Accepted(verified, signed, digest)


def _expired(
    signed: SignedManifest, digest: str, error: ExpiredManifestError, last_serial: int
) -> Refused:
    """A good signature on an expired manifest: the controller must see the refusal, unless
    the serial is old (an old serial never replaces the outcome of a newer one)."""
    reason = f"{type(error).__name__}: {error}"
    try:  # verify_manifest parsed it before it checked the expiry
        manifest = Manifest.model_validate(signed.manifest)
    except ValidationError:
        return Refused(reason, digest)
    if manifest.serial <= last_serial:
        return Refused(reason, digest)
    return Refused(reason, digest, final=manifest)
