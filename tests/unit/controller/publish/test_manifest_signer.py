"""The manifest signer: schema 2 keeps golden pairs out of the manifest (a file in the store,
named by sha256 and length) and every file's chunk hashes in a chunk index, so its size depends
on neither the model's inputs nor its size; schema 1 (v1
devices) carries them inline, and what would not fit the broker is refused before signing."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from edgefleet.controller.publish.artifact_urls import ArtifactUrlSigner
from edgefleet.controller.publish.manifests import (
    ChunkIndexTooLargeError,
    ManifestSigner,
    ManifestTooLargeError,
)
from edgefleet.controller.registry.records import ArtifactRecord
from edgefleet.controller.registry.store import ArtifactStore
from edgefleet.shared import (
    DEFAULT_LIMITS,
    GoldenPair,
    GoldenSet,
    IOSignature,
    Manifest,
    TensorData,
    TensorSpec,
    Topics,
    chunk_digests,
    encode,
    generate_signing_key,
    sha256_file,
    verify_manifest,
)
from edgefleet.shared.bounds import MAX_LATENCY_MS
from edgefleet.shared.manifest import decode_chunk_index
from edgefleet.shared.signing import public_key_of
from support.registry import fake_artifact

KEY = generate_signing_key()
PUB = public_key_of(KEY)
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _tensor(shape: tuple[int, ...], seed: int) -> TensorData:
    array = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return TensorData(
        dtype="float32", shape=shape, data_b64=base64.b64encode(array.tobytes()).decode()
    )


def record(tmp_path, store: ArtifactStore, *, image: tuple[int, ...], pairs: int) -> ArtifactRecord:
    """A stored artifact whose model takes ``image``-shaped inputs, with ``pairs`` golden pairs."""
    new = fake_artifact(tmp_path / "build", "onnx-fp32", b"model bytes " * 100)
    sha, size = store.put_file(new.file)
    golden = GoldenSet(
        pairs=tuple(
            GoldenPair(inputs={"x": _tensor(image, i)}, outputs={"y": _tensor((1, 10), i)})
            for i in range(pairs)
        )
    )
    signature = IOSignature(
        inputs=(TensorSpec(name="x", dtype="float32", shape=image),),
        outputs=(TensorSpec(name="y", dtype="float32", shape=(1, 10)),),
    )
    return ArtifactRecord(
        model="detector", version="1", target="onnx-fp32", runtime="onnxruntime", sha256=sha,
        size=size, path=store.path_for(sha), signature=signature, golden=golden,
        latency_budget_ms=5.0, report=new.report, created_at=NOW,
    )  # fmt: skip


def signer(store: ArtifactStore, **options) -> ManifestSigner:
    return ManifestSigner(
        KEY, Topics(), public_url="http://controller:8080", chunk_size=256 * 1024,
        ttl=timedelta(hours=1), urls=ArtifactUrlSigner(b"k" * 32), store=store, **options,
    )  # fmt: skip


def test_a_schema_2_manifest_stays_small_whatever_the_inputs(tmp_path) -> None:
    store = ArtifactStore(tmp_path / "store")
    small = record(tmp_path / "a", store, image=(1, 4), pairs=16)
    large = record(tmp_path / "b", store, image=(1, 3, 640, 640), pairs=16)  # 4.9 MB per input
    sizes = {}
    for artifact in (small, large):
        signed = signer(store).sign("pi-1", artifact, 7, wire_version=2, now=NOW)
        payload = encode(signed)
        sizes[artifact.signature.inputs[0].shape] = len(payload)
        manifest = verify_manifest(signed, PUB, device_id="pi-1", now=NOW).manifest
        assert manifest.schema_version == 2
        assert manifest.golden is None
        ref = manifest.golden_ref
        assert ref is not None
        blob = store.path_for(ref.sha256)  # the golden file is in the store, as signed
        assert sha256_file(blob) == ref.sha256
        assert blob.stat().st_size == ref.size
        assert GoldenSet.model_validate_json(blob.read_bytes()) == artifact.golden
        assert ref.http_url.startswith(f"http://controller:8080/artifacts/{ref.sha256}?")
        assert manifest.latency is not None
        assert manifest.latency.budget_ms is None
        assert manifest.latency_budget_ms == MAX_LATENCY_MS  # no budget from the controller host
        for ref in (manifest.artifact, manifest.golden_ref):  # both files name a chunk index
            assert ref.chunk_sha256 is None
            assert ref.chunk_index is not None
            assert ref.chunk_index.chunk_count == 1
    golden_bytes = large.golden.model_dump_json().encode()
    assert len(golden_bytes) > 100 * 1024 * 1024  # 105 MB of golden pairs
    # The manifest's size does not depend on the inputs' data: only the signature's shape and
    # the digits of the two sizes differ (16 bytes here).
    print(f"schema-2 manifest bytes by input shape: {sizes}")
    assert abs(sizes[(1, 3, 640, 640)] - sizes[(1, 4)]) <= 32
    assert max(sizes.values()) < 4 * 1024


def test_a_schema_2_manifest_stays_small_whatever_the_artifact_size(tmp_path) -> None:
    store = ArtifactStore(tmp_path / "store")
    small = record(tmp_path / "a", store, image=(1, 4), pairs=1)
    # The largest artifact the wire takes, sparse on disk: its chunk list is 2048 digests.
    big_file = tmp_path / "big.onnx"
    with big_file.open("wb") as f:
        f.truncate(DEFAULT_LIMITS.max_artifact_bytes)
    sha = sha256_file(big_file)
    store.path_for(sha).parent.mkdir(parents=True, exist_ok=True)
    big_file.rename(store.path_for(sha))
    big = replace(
        small, sha256=sha, size=DEFAULT_LIMITS.max_artifact_bytes, path=store.path_for(sha)
    )
    sizes = {}
    for artifact in (small, big):
        signed = signer(store).sign("pi-1", artifact, 7, wire_version=2, now=NOW)
        sizes[artifact.size] = len(encode(signed))
        ref = verify_manifest(signed, PUB, device_id="pi-1", now=NOW).manifest.artifact
        index = ref.chunk_index
        assert index is not None
        assert index.chunk_sha256 is not None
        assert ref.chunk_count == -(-artifact.size // (256 * 1024))
        raw = store.path_for(index.sha256).read_bytes()  # the index is in the store, as signed
        assert sha256_file(store.path_for(index.sha256)) == index.sha256
        assert decode_chunk_index(raw, ref) == tuple(chunk_digests(artifact.path, 256 * 1024))
    print(f"schema-2 manifest bytes by artifact size: {sizes}")
    assert abs(sizes[DEFAULT_LIMITS.max_artifact_bytes] - sizes[small.size]) <= 16
    # Schema 1 lists every chunk inline: 2048 digests of 64 hex digits, for comparison.
    inline = signer(store).sign("pi-1", replace(big, golden=None), 7, wire_version=1, now=NOW)
    assert len(encode(inline)) > 2048 * 64


def test_a_chunk_index_over_its_bound_is_refused_before_signing(tmp_path) -> None:
    store = ArtifactStore(tmp_path / "store")
    artifact = record(tmp_path / "a", store, image=(1, 4), pairs=1)  # 1200 bytes
    # Chunks of 1 byte: 1200 chunks, an index of 38400 bytes in 38400 chunks of 1 byte.
    tiny = ManifestSigner(
        KEY, Topics(), public_url="http://controller:8080", chunk_size=1,
        ttl=timedelta(hours=1), urls=ArtifactUrlSigner(b"k" * 32), store=store,
    )  # fmt: skip
    with pytest.raises(ChunkIndexTooLargeError, match="over the limit of 16"):
        tiny.sign("pi-1", artifact, 7, wire_version=2, now=NOW)


def test_inline_golden_pairs_that_would_not_fit_the_broker_are_refused_before_signing(
    tmp_path,
) -> None:
    store = ArtifactStore(tmp_path / "store")
    large = record(tmp_path / "b", store, image=(1, 3, 128, 128), pairs=16)  # ~4 MB inline
    with pytest.raises(ManifestTooLargeError, match="over the broker's maximum payload of 1048576"):
        signer(store).sign("pi-1", large, 7, wire_version=1, now=NOW)
    small = record(tmp_path / "a", store, image=(1, 4), pairs=2)
    signed = signer(store).sign("pi-1", small, 7, wire_version=1, latency_budget_ms=150.0, now=NOW)
    manifest = Manifest.model_validate(signed.manifest)
    assert (manifest.schema_version, manifest.golden_ref, manifest.latency) == (1, None, None)
    assert manifest.golden == small.golden
    assert manifest.latency_budget_ms == 150.0  # the operator's budget for its class
    tight = signer(store, max_payload_bytes=1024)
    with pytest.raises(ManifestTooLargeError):
        tight.sign("pi-1", small, 7, wire_version=1, now=NOW)


def test_the_controller_figure_travels_as_a_labelled_reference(tmp_path) -> None:
    store = ArtifactStore(tmp_path / "store")
    artifact = record(tmp_path / "a", store, image=(1, 4), pairs=1)
    latency = artifact.report.latency.model_copy(update={"p95_ms": 3.5, "host": "build-01 (x86)"})
    artifact = replace(artifact, report=artifact.report.model_copy(update={"latency": latency}))
    signed = signer(store).sign(
        "pi-1", artifact, 1, wire_version=2, latency_budget_ms=150.0, latency_ratio=4.0, now=NOW
    )
    policy = json.loads(encode(signed))["body"]["manifest"]["latency"]
    assert policy == {
        "budget_ms": 150.0, "max_ratio_to_active": 4.0, "floor_ms": 5.0,
        "reference_p95_ms": 3.5, "reference_host": "build-01 (x86)",
    }  # fmt: skip
