import json

import pytest

from edgefleet.shared import (
    SCHEMA_VERSION,
    ArtifactRef,
    ChunkHeader,
    DeviceState,
    Hello,
    TensorData,
    UnsupportedSchemaError,
    WireFormatError,
    decode,
    decode_any,
    decode_chunk_frame,
    encode,
    encode_chunk_frame,
    generate_signing_key,
)
from edgefleet.shared.wire import KINDS
from support.samples import SHA_A, make_manifest, sample_messages


@pytest.fixture(scope="module")
def messages():
    return sample_messages(generate_signing_key())


def test_every_kind_has_a_sample(messages):
    assert {type(m) for m in messages} == set(KINDS.values())


def test_every_message_round_trips(messages):
    for message in messages:
        payload = encode(message)
        assert decode(payload, type(message)) == message
        assert decode_any(payload) == message


def test_envelope_carries_schema_version_and_kind(messages):
    envelope = json.loads(encode(messages[0]))
    assert envelope["v"] == SCHEMA_VERSION == 2
    assert envelope["kind"] == "hello"


def test_unknown_schema_version_is_refused(messages):
    envelope = json.loads(encode(messages[0]))
    envelope["v"] = 3
    with pytest.raises(UnsupportedSchemaError) as err:
        decode(json.dumps(envelope).encode(), Hello)
    assert err.value.version == 3
    assert isinstance(err.value, WireFormatError)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"[]",
        b'{"v":1,"kind":"hello"}',
        b'{"v":1,"kind":"nope","body":{}}',
        b'{"v":"1","kind":"hello","body":{}}',
        b'{"v":1,"kind":"hello","body":{"device_id":"pi"}}',
        b'{"v":1,"kind":"hello","body":[]}',
    ],
)
def test_malformed_payloads_raise_one_clear_type(payload):
    with pytest.raises(WireFormatError):
        decode(payload, Hello)
    with pytest.raises(WireFormatError):
        decode_any(payload)


def test_wrong_kind_is_refused(messages):
    with pytest.raises(WireFormatError, match="expected a 'state' message"):
        decode(encode(messages[0]), DeviceState)


def test_unknown_fields_are_refused(messages):
    envelope = json.loads(encode(messages[0]))
    envelope["body"]["surprise"] = 1
    with pytest.raises(WireFormatError):
        decode(json.dumps(envelope).encode(), Hello)


def test_oversize_payload_is_refused(messages):
    with pytest.raises(WireFormatError, match="exceeds"):
        decode(encode(messages[0]), Hello, max_bytes=100)


def test_messages_are_frozen(messages):
    with pytest.raises(Exception, match="frozen"):
        messages[0].device_id = "other"


def test_tensor_data_checks_length_against_shape():
    TensorData.from_raw("float32", (2, 2), b"\0" * 16)
    with pytest.raises(ValueError, match="needs 16 bytes"):
        TensorData.from_raw("float32", (2, 2), b"\0" * 12)


def test_artifact_ref_needs_consistent_chunks_and_a_source():
    with pytest.raises(ValueError, match="chunk hashes"):
        ArtifactRef(sha256=SHA_A, size=1000, chunk_size=256, chunk_sha256=(SHA_A,), http_url="h")
    with pytest.raises(ValueError, match="source"):
        ArtifactRef(sha256=SHA_A, size=10, chunk_size=256, chunk_sha256=(SHA_A,))


def test_manifest_refuses_runtime_target_mismatch():
    data = make_manifest().model_dump()
    data["runtime"] = "litert"
    with pytest.raises(ValueError, match="runs on onnxruntime"):
        type(make_manifest()).model_validate(data)


def test_chunk_frame_round_trips():
    header = ChunkHeader(sha256=SHA_A, index=3, count=5, chunk_sha256=SHA_A)
    data = bytes(range(256)) * 10
    parsed, body = decode_chunk_frame(encode_chunk_frame(header, data))
    assert parsed == header
    assert body == data


@pytest.mark.parametrize(
    "payload",
    [b"", b"EFC1", b"XXXX\x00\x00\x00\x02{}", b"EFC1\x00\x00\xff\xff{}", b"EFC1\x00\x00\x00\x02{}"],
)
def test_malformed_chunk_frames_are_refused(payload):
    with pytest.raises(WireFormatError):
        decode_chunk_frame(payload)


def test_chunk_frame_with_index_past_count_is_refused():
    header = ChunkHeader(sha256=SHA_A, index=5, count=5, chunk_sha256=SHA_A)
    with pytest.raises(WireFormatError, match="index"):
        decode_chunk_frame(encode_chunk_frame(header, b"x"))
