"""Signed artifact URLs: a manifest's HTTP source carries a capability for one device.

The manifest reaches only its device (over its ACL-protected desired topic), so the URL's
HMAC stands in for the device's credentials: the artifact route accepts either the API token or
a URL signed here for that artifact, not yet expired.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode


class ArtifactUrlSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, device_id: str, sha256: str, expires: int) -> str:
        message = f"{device_id}\n{sha256}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def query(self, device_id: str, sha256: str, expires: int) -> str:
        """The query string that lets ``device_id`` fetch ``sha256`` until ``expires``."""
        sig = self._mac(device_id, sha256, expires)
        return urlencode({"device": device_id, "expires": expires, "sig": sig})

    def check(
        self, device_id: str, sha256: str, expires: int, sig: str, *, now: float | None = None
    ) -> str | None:
        """None when the signature is good and unexpired, else the reason it is refused."""
        if not hmac.compare_digest(sig.encode(), self._mac(device_id, sha256, expires).encode()):
            return "bad artifact URL signature"
        if expires < (now if now is not None else time.time()):
            return "artifact URL expired"
        return None
