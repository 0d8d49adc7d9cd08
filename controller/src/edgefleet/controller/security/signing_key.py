"""The controller's Ed25519 manifest signing key pair: created once, pinned by every agent."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.controller.security.errors import SecurityError
from edgefleet.shared.signing import (
    generate_signing_key,
    load_private_key,
    save_private_key,
    save_public_key,
)


def ensure_signing_key(private_path: Path, public_path: Path) -> Ed25519PublicKey:
    """Return the controller's public key, generating the pair (private 0600) if missing.

    An existing private key is never replaced; a missing public file is re-derived from it.

    Raises:
        SecurityError: the private key file exists but is not an Ed25519 key.
    """
    if private_path.exists():
        try:
            public = load_private_key(private_path).public_key()
        except (OSError, ValueError) as e:
            raise SecurityError(f"cannot load the signing key {private_path}: {e}") from e
    else:
        private = generate_signing_key()
        save_private_key(private, private_path)
        public = private.public_key()
    if not public_path.exists():
        save_public_key(public, public_path)
    return public
