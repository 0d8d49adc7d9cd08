"""Building and signing the desired-state manifest for one device and one artifact."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.controller.publish.artifact_urls import ArtifactUrlSigner
from edgefleet.controller.registry.records import ArtifactRecord
from edgefleet.shared import (
    ArtifactRef,
    HealthPolicy,
    Manifest,
    SignedManifest,
    Topics,
    chunk_digests,
    sign_manifest,
)
from edgefleet.shared.manifest import runtime_for_target


class ChunkDigestCache:
    """Per-chunk sha256 lists of stored artifacts, computed once per (sha256, chunk size)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def digests(self, sha256: str, path: Path, chunk_size: int) -> tuple[str, ...]:
        key = (sha256, chunk_size)
        with self._lock:
            cached = self._cache.get(key)
        if cached is None:
            cached = tuple(chunk_digests(path, chunk_size))
            with self._lock:
                self._cache[key] = cached
        return cached


class ManifestSigner:
    """Turns (device, artifact, serial) into a signed manifest."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        topics: Topics,
        *,
        public_url: str,
        chunk_size: int,
        ttl: timedelta,
        urls: ArtifactUrlSigner,
        health: HealthPolicy | None = None,
    ) -> None:
        self.key = key
        self.topics = topics
        self.public_url = public_url.rstrip("/")
        self.chunk_size = chunk_size
        self.ttl = ttl
        self.health = health or HealthPolicy()
        self.urls = urls
        self.chunks = ChunkDigestCache()

    def sign(
        self,
        device_id: str,
        artifact: ArtifactRecord,
        serial: int,
        *,
        health: HealthPolicy | None = None,
        now: datetime | None = None,
    ) -> SignedManifest:
        """Sign the desired state ``(device, artifact, serial)``, valid for the signer's TTL."""
        now = now or datetime.now(UTC)
        expires_at = now + self.ttl
        query = self.urls.query(device_id, artifact.sha256, int(expires_at.timestamp()))
        manifest = Manifest(
            device_id=device_id,
            model_id=artifact.model,
            version=artifact.version,
            serial=serial,
            target=artifact.target,
            runtime=runtime_for_target(artifact.target),
            artifact=ArtifactRef(
                sha256=artifact.sha256,
                size=artifact.size,
                chunk_size=self.chunk_size,
                chunk_sha256=self.chunks.digests(artifact.sha256, artifact.path, self.chunk_size),
                mqtt_topic=self.topics.artifact_chunks(artifact.sha256),
                http_url=f"{self.public_url}/artifacts/{artifact.sha256}?{query}",
            ),
            signature=artifact.signature,
            golden=artifact.golden,
            latency_budget_ms=artifact.latency_budget_ms,
            health=health or self.health,
            created_at=now,
            expires_at=expires_at,
        )
        return sign_manifest(manifest, self.key)
