"""Manifests for an artifact without golden pairs or a controller-host latency (an ``edgetpu``
one imported without its CPU twin): schema 1 carries no ``golden``, schema 2 no ``golden_ref``
and no latency reference, nothing is written to the store for it, and both verify as the agent
verifies them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from edgefleet.controller.publish.artifact_urls import ArtifactUrlSigner
from edgefleet.controller.publish.manifests import ManifestSigner
from edgefleet.controller.registry.records import ArtifactRecord
from edgefleet.controller.registry.store import ArtifactStore
from edgefleet.shared import IOSignature, TensorSpec, Topics, generate_signing_key, verify_manifest
from edgefleet.shared.signing import public_key_of
from support.registry import fake_artifact

KEY = generate_signing_key()
NOW = datetime(2026, 12, 1, tzinfo=UTC)
NATIVE = IOSignature(
    inputs=(TensorSpec(name="x", dtype="int8", shape=(1, 4)),),
    outputs=(TensorSpec(name="logits", dtype="int8", shape=(1, 3)),),
)


def unmeasured_record(tmp_path, store: ArtifactStore) -> ArtifactRecord:
    measured = fake_artifact(tmp_path / "build", "tflite-full-int8", b"compiled " * 100)
    sha, size = store.put_file(measured.file)
    unmeasured = {"quality": None, "latency": None, "unmeasured": "no CPU twin given"}
    report = measured.report.model_copy(
        update={"target": "edgetpu", "runtime": "edgetpu", **unmeasured}
    )
    return ArtifactRecord(
        model="tpu", version="1", target="edgetpu", runtime="edgetpu", sha256=sha, size=size,
        path=store.path_for(sha), signature=NATIVE, golden=None, latency_budget_ms=60_000.0,
        report=report, created_at=NOW,
    )  # fmt: skip


def test_neither_schema_carries_golden_pairs_or_a_latency_reference(tmp_path) -> None:
    store = ArtifactStore(tmp_path / "store")
    artifact = unmeasured_record(tmp_path, store)
    blobs = sorted(p.name for p in store.root.rglob("*") if p.is_file())
    signer = ManifestSigner(
        KEY, Topics(), public_url="http://controller:8080", chunk_size=256 * 1024,
        ttl=timedelta(hours=1), urls=ArtifactUrlSigner(b"k" * 32), store=store,
    )  # fmt: skip
    v1 = signer.sign("coral-1", artifact, 3, wire_version=1, latency_budget_ms=40.0, now=NOW)
    v2 = signer.sign("coral-1", artifact, 3, wire_version=2, latency_ratio=4.0, now=NOW)
    for signed, schema in ((v1, 1), (v2, 2)):
        manifest = verify_manifest(signed, public_key_of(KEY), device_id="coral-1", now=NOW)
        got = manifest.manifest
        assert got.schema_version == schema
        assert (got.golden, got.golden_ref) == (None, None)
        assert (got.target, got.runtime, got.signature) == ("edgetpu", "edgetpu", NATIVE)
    for signed in (v1, v2):  # as signed, not only as read back
        assert (signed.manifest.get("golden"), signed.manifest.get("golden_ref")) == (None, None)
    assert v1.manifest["latency_budget_ms"] == 40.0
    policy = v2.manifest["latency"]
    assert policy["max_ratio_to_active"] == 4.0
    assert (policy["reference_p95_ms"], policy["reference_host"]) == (None, None)
    # No golden file: the only new blob is the artifact's chunk index, which schema 2 names.
    index = v2.manifest["artifact"]["chunk_index"]
    assert "chunk_index" not in v1.manifest["artifact"]
    assert sorted(p.name for p in store.root.rglob("*") if p.is_file()) == sorted(
        [*blobs, index["sha256"]]
    )


def test_an_artifact_with_golden_pairs_still_gets_its_golden_ref(tmp_path) -> None:
    store = ArtifactStore(tmp_path / "store")
    measured = fake_artifact(tmp_path / "build", "onnx-fp32", b"model " * 100)
    sha, size = store.put_file(measured.file)
    artifact = replace(
        unmeasured_record(tmp_path, store),
        target="onnx-fp32", runtime="onnxruntime", sha256=sha, size=size,
        path=store.path_for(sha), golden=measured.golden, report=measured.report,
    )  # fmt: skip
    signer = ManifestSigner(
        KEY, Topics(), public_url="http://controller:8080", chunk_size=256 * 1024,
        ttl=timedelta(hours=1), urls=ArtifactUrlSigner(b"k" * 32), store=store,
    )  # fmt: skip
    signed = signer.sign("pi-1", artifact, 1, wire_version=2, now=NOW)
    manifest = verify_manifest(signed, public_key_of(KEY), device_id="pi-1", now=NOW).manifest
    assert manifest.golden_ref is not None
    assert manifest.latency is not None
    assert manifest.latency.reference_p95_ms == 0.2
