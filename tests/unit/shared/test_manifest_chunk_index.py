"""Chunk indexes in manifest refs: exactly one of the inline list and the index, an index bounded
in chunks and exactly 32 bytes per chunk of the file it indexes, counts consistent in both forms;
schema 1 keeps its inline form byte for byte (no ``chunk_index`` key a v1 agent would refuse)."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgefleet.shared import (
    DEFAULT_LIMITS,
    ArtifactRef,
    IOSignature,
    LatencyPolicy,
    Manifest,
    SignedManifest,
    TensorSpec,
    WireFormatError,
    generate_signing_key,
    sign_manifest,
    verify_manifest,
)
from edgefleet.shared.errors import LengthMismatchError
from edgefleet.shared.manifest import DIGEST_BYTES, decode_chunk_index, encode_chunk_index
from edgefleet.shared.signing import canonical_json, key_id, public_key_of

SHA = "ab" * 32
KEY = generate_signing_key()
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def digest(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def index_for(count: int, chunk_size: int = 4096) -> ArtifactRef:
    raw = encode_chunk_index([digest(i) for i in range(count)])
    pieces = [raw[i : i + chunk_size] for i in range(0, len(raw), chunk_size)]
    return ArtifactRef(
        sha256=hashlib.sha256(raw).hexdigest(),
        size=len(raw),
        chunk_size=chunk_size,
        chunk_sha256=tuple(hashlib.sha256(p).hexdigest() for p in pieces),
        http_url="http://controller/artifacts/index",
    )


def test_an_indexed_ref_counts_its_chunks_and_reads_them_from_its_index() -> None:
    index = index_for(3)
    ref = ArtifactRef(sha256=SHA, size=300, chunk_size=128, chunk_index=index, mqtt_topic="t")
    assert ref.chunk_count == 3
    assert index.chunk_count == 1
    raw = encode_chunk_index([digest(i) for i in range(3)])
    assert len(raw) == 3 * DIGEST_BYTES
    assert decode_chunk_index(raw, ref) == tuple(digest(i) for i in range(3))
    with pytest.raises(LengthMismatchError, match="chunk index of abababababab: 64 bytes"):
        decode_chunk_index(raw[:-32], ref)
    # The form not used is not on the wire at all.
    assert "chunk_sha256" not in ref.model_dump(mode="json")
    assert "chunk_index" not in index.model_dump(mode="json")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "exactly one of chunk_sha256 and chunk_index"),
        ({"chunk_sha256": (SHA,) * 3, "chunk_index": index_for(3)}, "exactly one of"),
        ({"chunk_index": index_for(2)}, "a chunk index of 64 bytes for 3 chunks; expected 96"),
        ({"chunk_index": index_for(4)}, "a chunk index of 128 bytes for 3 chunks"),
        (
            {
                "chunk_index": ArtifactRef(
                    sha256=SHA, size=96, chunk_size=32, chunk_index=index_for(3), http_url="h"
                )
            },
            "a chunk index carries its own chunk hashes inline",
        ),
    ],
)
def test_inconsistent_refs_are_refused(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        ArtifactRef(sha256=SHA, size=300, chunk_size=128, http_url="h", **fields)


def test_an_index_is_bounded_so_a_manifest_is() -> None:
    chunks = DEFAULT_LIMITS.max_index_chunks * 4096 // DIGEST_BYTES  # fills the bound exactly
    ArtifactRef(sha256=SHA, size=chunks, chunk_size=1, chunk_index=index_for(chunks), http_url="h")
    too_long = index_for(chunks + 1)
    assert too_long.chunk_count == DEFAULT_LIMITS.max_index_chunks + 1
    with pytest.raises(ValidationError, match="a chunk index of 17 chunks, over the limit of 16"):
        ArtifactRef(sha256=SHA, size=chunks + 1, chunk_size=1, chunk_index=too_long, http_url="h")


@st.composite
def ref_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """Ref-shaped JSON, mostly near-consistent (so both outcomes are exercised)."""
    size = draw(st.integers(min_value=-2, max_value=3000))
    chunk_size = draw(st.integers(min_value=-1, max_value=700))
    count = -(-size // chunk_size) if size > 0 and chunk_size > 0 else 1
    payload: dict[str, Any] = {"sha256": SHA, "size": size, "chunk_size": chunk_size}
    listed = draw(st.sampled_from([count, count - 1, count + 1, 0]))
    form = draw(st.sampled_from(["inline", "index", "both", "neither"]))
    if form in {"inline", "both"}:
        payload["chunk_sha256"] = [SHA] * max(0, listed)
    if form in {"index", "both"}:
        index_size = draw(
            st.sampled_from(
                [DIGEST_BYTES * count, DIGEST_BYTES * listed, draw(st.integers(-1, 99))]
            )
        )
        index_chunk = draw(st.integers(min_value=1, max_value=1024))
        index_count = -(-index_size // index_chunk) if index_size > 0 else 1
        index = {
            "sha256": SHA,
            "size": index_size,
            "chunk_size": index_chunk,
            "chunk_sha256": [SHA] * draw(st.sampled_from([index_count, index_count + 1])),
            "http_url": "h",
        }
        if draw(st.booleans()):
            index["chunk_index"] = draw(st.sampled_from([None, dict(index)]))
        payload["chunk_index"] = index
    if draw(st.booleans()):
        payload["mqtt_topic"] = "t"
    if draw(st.booleans()) or "mqtt_topic" not in payload:
        payload["http_url"] = draw(st.sampled_from(["h", None]))
    return payload


@settings(max_examples=400, deadline=None)
@given(ref_payloads())
def test_any_ref_validates_with_consistent_counts_or_is_refused_as_a_wire_error(
    payload: dict[str, Any],
) -> None:
    try:
        ref = ArtifactRef.model_validate(payload)
    except ValidationError:
        return
    assert ref.chunk_count == -(-ref.size // ref.chunk_size) <= DEFAULT_LIMITS.max_chunks
    assert (ref.chunk_sha256 is None) != (ref.chunk_index is None)
    if ref.chunk_sha256 is not None:
        assert len(ref.chunk_sha256) == ref.chunk_count
    else:
        index = ref.chunk_index
        assert index is not None
        assert index.chunk_index is None
        assert index.chunk_sha256 is not None
        assert len(index.chunk_sha256) == index.chunk_count <= DEFAULT_LIMITS.max_index_chunks
        assert index.size == DIGEST_BYTES * ref.chunk_count
    assert ArtifactRef.model_validate_json(ref.model_dump_json()) == ref  # round trip


def manifest(schema: int, artifact: ArtifactRef) -> Manifest:
    extra: dict[str, Any] = {"latency": LatencyPolicy()} if schema == 2 else {}
    return Manifest(
        schema_version=schema,  # type: ignore[arg-type]
        device_id="pi-1", model_id="m", version="1", serial=1, target="onnx-fp32",
        runtime="onnxruntime", artifact=artifact,
        signature=IOSignature(
            inputs=(TensorSpec(name="x", dtype="float32", shape=(1, 4)),),
            outputs=(TensorSpec(name="y", dtype="float32", shape=(1, 3)),),
        ),
        latency_budget_ms=100.0, created_at=NOW, expires_at=NOW + timedelta(hours=1), **extra,
    )  # fmt: skip


def test_schema_1_keeps_its_inline_form_and_refuses_an_index() -> None:
    inline = ArtifactRef(
        sha256=SHA, size=300, chunk_size=128, chunk_sha256=(SHA,) * 3, http_url="h"
    )
    signed = sign_manifest(manifest(1, inline), KEY)
    assert set(signed.manifest["artifact"]) == {  # type: ignore[arg-type]
        "sha256", "size", "chunk_size", "chunk_sha256", "mqtt_topic", "http_url"
    }  # fmt: skip
    indexed = inline.model_copy(update={"chunk_sha256": None, "chunk_index": index_for(3)})
    with pytest.raises(ValidationError, match="a chunk index belongs to manifest schema 2"):
        manifest(1, indexed)
    v2 = sign_manifest(manifest(2, indexed), KEY)
    got = verify_manifest(v2, public_key_of(KEY), device_id="pi-1", now=NOW).manifest
    assert got.artifact.chunk_index == index_for(3)
    assert got.artifact.chunk_count == 3


def sign_body(body: dict[str, Any]) -> SignedManifest:
    """Sign a raw manifest body as the controller would (a bug, not an attack: it is signed)."""
    signature = KEY.sign(canonical_json(body))
    return SignedManifest(
        manifest=body,
        key_id=key_id(public_key_of(KEY)),
        signature_b64=base64.b64encode(signature).decode("ascii"),
    )


def test_a_signed_manifest_with_an_index_of_the_wrong_length_is_refused_as_a_wire_error() -> None:
    good = ArtifactRef(sha256=SHA, size=300, chunk_size=128, chunk_index=index_for(3), http_url="h")
    body = manifest(2, good).model_dump(mode="json")
    verify_manifest(sign_body(body), public_key_of(KEY), device_id="pi-1", now=NOW)
    body["artifact"]["chunk_index"] = index_for(2).model_dump(mode="json")  # 64 bytes, 3 chunks
    with pytest.raises(WireFormatError, match="a chunk index of 64 bytes for 3 chunks"):
        verify_manifest(sign_body(body), public_key_of(KEY), device_id="pi-1", now=NOW)
