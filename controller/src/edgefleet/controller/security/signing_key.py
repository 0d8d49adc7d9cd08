"""The controller's own secrets, each created once: the Ed25519 manifest signing key pair
(pinned by every agent) and random secrets such as the API token."""

from __future__ import annotations

import secrets
from pathlib import Path

from edgefleet.controller.security.errors import SecurityError
from edgefleet.shared.ed25519 import PublicKey
from edgefleet.shared.signing import (
    generate_signing_key,
    load_private_key,
    public_key_of,
    save_private_key,
    save_public_key,
    write_file_atomic,
)


def ensure_signing_key(private_path: Path, public_path: Path) -> PublicKey:
    """Return the controller's public key, generating the pair (private 0600) if missing.

    An existing private key is never replaced; a missing public file is re-derived from it.

    Raises:
        SecurityError: the private key file exists but is not an Ed25519 key.
    """
    if private_path.exists():
        try:
            public = public_key_of(load_private_key(private_path))
        except (OSError, ValueError) as e:
            raise SecurityError(f"cannot load the signing key {private_path}: {e}") from e
    else:
        private = generate_signing_key()
        save_private_key(private, private_path)
        public = public_key_of(private)
    if not public_path.exists():
        save_public_key(public, public_path)
    return public


def load_or_create_secret(path: Path) -> str:
    """A random URL-safe secret kept in ``path`` (0600), created on first use."""
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(32)
    write_file_atomic(path, secret.encode(), 0o600)
    return secret
