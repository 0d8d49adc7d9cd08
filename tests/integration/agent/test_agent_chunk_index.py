"""Chunk indexes on a real agent and a real broker: the artifact and the golden file arrive
through their indexes over MQTT and over HTTP, and an index that is not the signed one (wrong
bytes served, or signed digests that are not the file's) is refused as an integrity failure
naming the index; a signed index of the wrong length never gets past verification."""

from __future__ import annotations

import base64
import hashlib

import numpy as np
import pytest

from edgefleet.shared import ArtifactRef, EventType, SignedManifest
from edgefleet.shared.manifest import DIGEST_BYTES
from edgefleet.shared.signing import canonical_json, key_id, public_key_of
from support.agent_harness import DEVICE, x_batch

GOLDEN = [x_batch(1, seed=i) for i in range(3)]


def indexes(manifest) -> list[ArtifactRef]:
    """The chunk indexes a schema-2 manifest names: the golden file's, then the artifact's."""
    golden, artifact = manifest.golden_ref, manifest.artifact
    assert golden is not None
    assert golden.chunk_index is not None
    assert artifact.chunk_index is not None
    assert artifact.chunk_sha256 is None
    return [golden.chunk_index, artifact.chunk_index]


@pytest.mark.parametrize("source", ["mqtt", "http"])
def test_artifact_and_golden_file_arrive_through_their_indexes(
    models, publisher, watcher, start_agent, source
):
    agent = start_agent()
    manifest = publisher.manifest(
        models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=GOLDEN, chunk_size=16,
        schema=2, mqtt_source=source == "mqtt", http_source=source == "http",
    )  # fmt: skip
    golden_index, artifact_index = indexes(manifest)
    assert artifact_index.size == DIGEST_BYTES * manifest.artifact.chunk_count
    assert manifest.artifact.chunk_count > 10  # many digests, none of them in the manifest
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    swapped = watcher.wait_event(EventType.SWAPPED, where=lambda e: e.serial == 1)
    assert swapped.figures["golden_pairs"] == 3.0
    golden, artifact = manifest.golden_ref, manifest.artifact
    if source == "mqtt":
        for ref in (golden_index, golden, artifact_index, artifact):
            assert set(publisher.requested_indices(ref.sha256)) == set(range(ref.chunk_count))
    else:
        assert publisher.requests == []
        fetched = list(dict.fromkeys(publisher.http_paths))
        # Each index before the file it indexes.
        assert fetched == [
            golden_index.sha256,
            golden.sha256,
            artifact_index.sha256,
            artifact.sha256,
        ]
    inputs = x_batch(2, seed=9)
    np.testing.assert_allclose(
        agent.infer(inputs)["logits"], models.onnx_a.reference(inputs)["logits"], rtol=1e-4
    )
    # Nothing of the indexes is left behind in the downloads directory.
    left = {p.name for p in agent.store.downloads_dir.iterdir()}
    assert not left & {golden_index.sha256, artifact_index.sha256}


@pytest.mark.parametrize("which", ["artifact", "golden"])
def test_an_index_served_with_the_wrong_bytes_is_refused_as_an_integrity_failure(
    models, publisher, watcher, start_agent, retained, which
):
    start_agent(max_bad_chunks=2)
    manifest = publisher.manifest(
        models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=GOLDEN, chunk_size=64, schema=2
    )
    golden_index, artifact_index = indexes(manifest)
    index = artifact_index if which == "artifact" else golden_index
    raw = bytearray(publisher.artifacts[index.sha256])
    raw[5] ^= 0xFF
    publisher.served[index.sha256] = bytes(raw)
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    state = retained(lambda s: s.last_outcome is not None and s.last_outcome.serial == 1)
    outcome = state.last_outcome
    assert outcome.result == "refused", outcome
    assert outcome.reason.startswith("HashMismatchError: chunk index "), outcome.reason
    assert index.sha256[:12] in outcome.reason
    assert state.active is None
    refused = watcher.wait_event(EventType.VERIFY_FAILED, where=lambda e: e.serial == 1)
    assert "chunk index" in refused.reason
    # The file it indexes was never asked for: nothing is fetched against unverified digests.
    indexed = manifest.artifact if which == "artifact" else manifest.golden_ref
    assert publisher.requested_indices(indexed.sha256) == []


def test_a_signed_index_that_is_not_the_files_digests_is_refused(
    models, publisher, watcher, start_agent, retained
):
    start_agent(max_bad_chunks=2)
    manifest = publisher.manifest(
        models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=GOLDEN, chunk_size=64, schema=2
    )
    artifact = manifest.artifact
    # The right length and hashing right, but digests of other bytes: signed, still refused.
    wrong = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(artifact.chunk_count))
    index = publisher._ref(wrong, publisher.add_artifact(wrong, 4096), 4096, True, False)
    bad = manifest.model_copy(
        update={"artifact": artifact.model_copy(update={"chunk_index": index})}
    )
    publisher.publish_desired(DEVICE, publisher.sign(bad))
    state = retained(lambda s: s.last_outcome is not None and s.last_outcome.serial == 1)
    assert state.last_outcome.result == "refused"
    assert state.last_outcome.reason.startswith("HashMismatchError: chunk "), state.last_outcome
    assert state.active is None


def test_a_signed_index_of_the_wrong_length_is_refused_before_anything_is_fetched(
    models, publisher, watcher, start_agent
):
    start_agent()
    manifest = publisher.manifest(
        models.onnx_a, device_id=DEVICE, serial=1, golden_inputs=GOLDEN, chunk_size=64, schema=2
    )
    short = publisher.artifacts[manifest.artifact.chunk_index.sha256][:-DIGEST_BYTES]
    index = publisher._ref(short, publisher.add_artifact(short, 4096), 4096, True, False)
    body = manifest.model_dump(mode="json")
    body["artifact"]["chunk_index"] = index.model_dump(mode="json")  # one digest short
    publisher.publish_desired(DEVICE, sign_body(publisher, body))
    refused = watcher.wait_event(EventType.MANIFEST_REFUSED)
    expected = DIGEST_BYTES * manifest.artifact.chunk_count
    assert f"a chunk index of {expected - DIGEST_BYTES} bytes" in refused.reason
    assert f"expected {expected}" in refused.reason
    assert publisher.requests == []


def sign_body(publisher, body) -> SignedManifest:
    """A manifest body signed as the controller would sign it (a controller bug: signed)."""
    return SignedManifest(
        manifest=body,
        key_id=key_id(public_key_of(publisher.key)),
        signature_b64=base64.b64encode(publisher.key.sign(canonical_json(body))).decode(),
    )
