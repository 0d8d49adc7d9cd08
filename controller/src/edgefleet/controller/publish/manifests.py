"""Building and signing the desired-state manifest for one device and one artifact.

A wire-v2 device gets manifest schema 2: its golden pairs as a file of their own in the artifact
store (canonical JSON of the golden set, content-addressed, fetched and verified like the
artifact), so a manifest's size does not depend on the model's inputs, and a latency policy the
device judges with its own measurements. A v1 device gets schema 1 with the pairs inline.
An artifact without golden pairs (an edgetpu one imported without its CPU twin) gets neither
``golden`` nor ``golden_ref``: the device checks its outputs' dtypes, shapes and finiteness.
In schema 2 every file's chunk hashes travel in a chunk index, a content-addressed blob of raw
32-byte digests in the store (:class:`ChunkIndexes`), so the manifest's size is bounded by a
constant whatever the sizes of the artifact and its golden file; schema 1 lists them inline.
Nothing larger than the broker takes is ever signed: :class:`ManifestTooLargeError` says so.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.controller.errors import ControllerError
from edgefleet.controller.publish.artifact_urls import ArtifactUrlSigner
from edgefleet.controller.registry.records import ArtifactRecord
from edgefleet.controller.registry.store import ArtifactStore
from edgefleet.shared import (
    DEFAULT_LIMITS,
    SCHEMA_VERSION,
    ArtifactRef,
    HealthPolicy,
    LatencyPolicy,
    Manifest,
    SignedManifest,
    Topics,
    canonical_json,
    chunk_digests,
    sign_manifest,
)
from edgefleet.shared.bounds import MAX_LATENCY_MS
from edgefleet.shared.manifest import GoldenSet, encode_chunk_index, runtime_for_target


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


class ChunkIndexes:
    """Chunk indexes of stored files as content-addressed blobs (the raw sha256 of each chunk,
    in order), written once per (file, chunk size); the blob's sha256 and size."""

    def __init__(self, store: ArtifactStore, chunks: ChunkDigestCache) -> None:
        self.store = store
        self.chunks = chunks
        self._blobs: dict[tuple[str, int], tuple[str, int]] = {}
        self._lock = threading.Lock()

    def blob(self, sha256: str, path: Path, chunk_size: int) -> tuple[str, int]:
        """The chunk index of the stored file ``sha256`` at ``path``, in chunks of
        ``chunk_size``, as a stored blob: its sha256 and size."""
        key = (sha256, chunk_size)
        with self._lock:
            known = self._blobs.get(key)
        if known is not None and self.store.contains(known[0]):
            return known
        digests = self.chunks.digests(sha256, path, chunk_size)
        blob = self.store.put_bytes(encode_chunk_index(digests))
        with self._lock:
            self._blobs[key] = blob
        return blob


class ManifestNotSignedError(ControllerError):
    """The manifest cannot be signed as asked (the reason is in the message)."""


class ChunkIndexTooLargeError(ManifestNotSignedError):
    """A file has more chunks than a bounded chunk index can name at this chunk size."""

    def __init__(self, sha256: str, chunks: int, index_chunks: int, chunk_size: int) -> None:
        super().__init__(
            f"{sha256[:12]} has {chunks} chunks of {chunk_size} bytes: its chunk index would "
            f"take {index_chunks} chunks, over the limit of {DEFAULT_LIMITS.max_index_chunks}; "
            "a larger chunk_size fits it; not signed"
        )
        self.chunks = chunks
        self.index_chunks = index_chunks


class ManifestTooLargeError(ManifestNotSignedError):
    """The manifest would be larger than the broker's maximum payload: it is not signed."""

    def __init__(self, size: int, limit: int, *, schema: int) -> None:
        why = "its golden pairs travel inline to a wire-v1 device" if schema == 1 else "it"
        super().__init__(
            f"the manifest would be {size} bytes, over the broker's maximum payload of {limit} "
            f"bytes ({why}); not signed"
        )
        self.size = size
        self.limit = limit


# Room for the envelope, the signature and its key id around the manifest's own JSON.
_SIGNED_OVERHEAD = 512


class GoldenFiles:
    """Golden sets as content-addressed blobs in the artifact store, written once each."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self._blobs: dict[str, tuple[str, int, Path]] = {}  # artifact sha256 -> golden blob
        self._lock = threading.Lock()

    def blob(self, artifact_sha256: str, golden: GoldenSet) -> tuple[str, int, Path]:
        """The golden set of the artifact ``artifact_sha256`` as a stored blob: sha256, size
        and path."""
        with self._lock:
            known = self._blobs.get(artifact_sha256)
        if known is not None and known[2].is_file():
            return known
        sha, size = self.store.put_bytes(canonical_json(golden.model_dump(mode="json")))
        blob = (sha, size, self.store.path_for(sha))
        with self._lock:
            self._blobs[artifact_sha256] = blob
        return blob


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
        store: ArtifactStore,
        health: HealthPolicy | None = None,
        max_payload_bytes: int = DEFAULT_LIMITS.max_message_bytes,
    ) -> None:
        self.key = key
        self.topics = topics
        self.public_url = public_url.rstrip("/")
        self.chunk_size = chunk_size
        self.ttl = ttl
        self.health = health or HealthPolicy()
        self.urls = urls
        self.store = store
        self.chunks = ChunkDigestCache()
        self.indexes = ChunkIndexes(store, self.chunks)
        self.golden = GoldenFiles(store)
        self.max_payload_bytes = max_payload_bytes

    def sign(
        self,
        device_id: str,
        artifact: ArtifactRecord,
        serial: int,
        *,
        wire_version: int = SCHEMA_VERSION,
        health: HealthPolicy | None = None,
        latency_budget_ms: float | None = None,
        latency_ratio: float = 3.0,
        now: datetime | None = None,
    ) -> SignedManifest:
        """Sign the desired state ``(device, artifact, serial)``, valid for the signer's TTL, in
        the manifest schema of the device's wire version.

        ``latency_budget_ms`` is the operator's budget for the device's class; without one, no
        absolute budget is signed (the device judges against its own active model, v2, or
        accepts and reports, v1).

        Raises:
            ManifestTooLargeError: it would not fit the broker's maximum payload.
            ChunkIndexTooLargeError: a file's chunk index would exceed its bound (schema 2).
        """
        now = now or datetime.now(UTC)
        expires_at = now + self.ttl
        schema = 2 if wire_version >= 2 else 1
        fields: dict[str, Any] = {}
        if schema == 1:
            fields["golden"] = artifact.golden
        else:
            if artifact.golden is not None:  # without: dtypes, shapes and finiteness only
                sha, size, path = self.golden.blob(artifact.sha256, artifact.golden)
                fields["golden_ref"] = self._ref(
                    device_id, sha, size, path, expires_at, indexed=True
                )
            fields["latency"] = _latency_policy(artifact, latency_budget_ms, latency_ratio)
        manifest = Manifest(
            schema_version=schema,
            device_id=device_id,
            model_id=artifact.model,
            version=artifact.version,
            serial=serial,
            target=artifact.target,
            runtime=runtime_for_target(artifact.target),
            artifact=self._ref(
                device_id,
                artifact.sha256,
                artifact.size,
                artifact.path,
                expires_at,
                indexed=schema == 2,
            ),
            signature=artifact.signature,
            latency_budget_ms=latency_budget_ms or MAX_LATENCY_MS,
            health=health or self.health,
            created_at=now,
            expires_at=expires_at,
            **fields,
        )
        size = len(manifest.model_dump_json()) + _SIGNED_OVERHEAD
        if size > self.max_payload_bytes:
            raise ManifestTooLargeError(size, self.max_payload_bytes, schema=schema)
        return sign_manifest(manifest, self.key)

    def _ref(
        self,
        device_id: str,
        sha256: str,
        size: int,
        path: Path,
        expires_at: datetime,
        *,
        indexed: bool = False,
    ) -> ArtifactRef:
        """The ref of a stored file for ``device_id``: its chunk hashes inline, or (``indexed``)
        in its chunk index, a ref of its own with its sources signed for the same device.

        Raises:
            ChunkIndexTooLargeError: the index would exceed its bound.
        """
        sources = self._sources(device_id, sha256, expires_at)
        if not indexed:
            digests = self.chunks.digests(sha256, path, self.chunk_size)
            return ArtifactRef(
                sha256=sha256, size=size, chunk_size=self.chunk_size, chunk_sha256=digests,
                **sources,
            )  # fmt: skip
        chunks = -(-size // self.chunk_size)
        index_chunks = -(-chunks * 32 // self.chunk_size)
        if index_chunks > DEFAULT_LIMITS.max_index_chunks:
            raise ChunkIndexTooLargeError(sha256, chunks, index_chunks, self.chunk_size)
        index_sha, index_size = self.indexes.blob(sha256, path, self.chunk_size)
        index = self._ref(
            device_id, index_sha, index_size, self.store.path_for(index_sha), expires_at
        )
        return ArtifactRef(
            sha256=sha256, size=size, chunk_size=self.chunk_size, chunk_index=index, **sources
        )

    def _sources(self, device_id: str, sha256: str, expires_at: datetime) -> dict[str, str]:
        """Where ``device_id`` fetches ``sha256``: its chunk topic and a URL signed for it."""
        query = self.urls.query(device_id, sha256, int(expires_at.timestamp()))
        return {
            "mqtt_topic": self.topics.artifact_chunks(sha256),
            "http_url": f"{self.public_url}/artifacts/{sha256}?{query}",
        }


def _latency_policy(
    artifact: ArtifactRecord, budget_ms: float | None, ratio: float
) -> LatencyPolicy:
    """The schema-2 latency policy; the controller host's p95 travels as a labelled reference
    when there is one (an edgetpu artifact imported without its CPU twin has none)."""
    measured = artifact.report.latency
    if measured is None:
        return LatencyPolicy(budget_ms=budget_ms, max_ratio_to_active=ratio)
    return LatencyPolicy(
        budget_ms=budget_ms,
        max_ratio_to_active=ratio,
        reference_p95_ms=min(measured.p95_ms, MAX_LATENCY_MS),
        reference_host=measured.host or "controller host (not recorded)",
    )
