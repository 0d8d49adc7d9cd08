"""Every wire bound, one test each; and no payload makes a decoder raise anything else."""

import base64
import contextlib
import copy
import json
import struct
import time
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.shared import (
    DEFAULT_LIMITS,
    ChunkHeader,
    DeviceState,
    FieldBoundError,
    IntegrityError,
    InvalidFieldError,
    MalformedPayloadError,
    PayloadTooDeepError,
    PayloadTooLargeError,
    SignedManifest,
    WireFormatError,
    canonical_json,
    decode,
    decode_any,
    decode_chunk_frame,
    decode_versioned,
    encode,
    generate_signing_key,
    key_id,
    sign_manifest,
    verify_manifest,
)
from edgefleet.shared.bounds import MAX_CPUS, MAX_SERIAL
from edgefleet.shared.signing import public_key_of
from edgefleet.shared.wire import (
    _HEADER_LEN,
    CHUNK_FRAME_VERSION,
    CHUNK_MAGIC,
    KINDS,
    nesting_depth_exceeds,
)
from support.samples import NOW, SHA_A, make_manifest, sample_messages
from support.wire_fuzz import json_values, mutated

KEY = generate_signing_key()
PUB = public_key_of(KEY)
SAMPLES = {kind: m for m in sample_messages(KEY) for kind, t in KINDS.items() if type(m) is t}
MAX_CHUNKS = DEFAULT_LIMITS.max_chunks
BIG = 2**53

# Bodies with every optional field filled in, so each bound has a value to break.
PROGRESS = {"serial": 4, "sha256": SHA_A, "phase": "downloading", "done_bytes": 10,
            "total_bytes": 20, "attempts": 1, "last_error": "timeout"}  # fmt: skip
OUTCOME = {
    "serial": 3,
    "sha256": SHA_A,
    "result": "refused",
    "reason": "bad",
    "at": NOW.isoformat(),
}
BASES = {kind: json.loads(encode(m))["body"] for kind, m in SAMPLES.items()}
BASES["state"] |= {"seq": 5, "detail": "ok", "progress": PROGRESS, "last_outcome": OUTCOME}


def _set(body, path, value):
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _payload(kind, body, version=2):
    return json.dumps({"v": version, "kind": kind, "body": body}).encode()


def _with(kind, path, value):
    body = copy.deepcopy(BASES[kind])
    _set(body, path, value)
    return _payload(kind, body)


def _n(count, item):
    return [item] * count


def _dict(count):
    return {f"k{i}": 1.0 for i in range(count)}


# (kind, field path, a value past the bound, the value at the bound)
BOUNDS = [
    # Timestamps lie in 2000..2200 (UTC); 9999-12-31T23:59-01:00 has no UTC form at all.
    ("hello", "started_at", "1999-12-31T23:59:59Z", "2000-01-01T00:00:00Z"),
    ("event", "at", "2200-01-01T00:00:01Z", "2200-01-01T00:00:00Z"),
    ("event", "at", "9999-12-31T23:59:59-01:00", "2199-12-31T23:00:00-01:00"),
    ("state", "updated_at", "0001-01-01T00:00:00+01:00", "2000-01-01T01:00:00+01:00"),
    ("state", "last_outcome.at", "2200-01-02T00:00:00Z", "2100-01-01T00:00:00Z"),
    ("telemetry", "window_end", "3000-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
    ("command", "issued_at", "9999-12-31T23:59:59Z", "2026-01-01T00:00:00Z"),
    ("hello", "agent_version", "v" * 65, "v" * 64),
    ("hello", "hardware.arch", "a" * 33, "a" * 32),
    ("hello", "hardware.os", "o" * 129, "o" * 128),
    ("hello", "hardware.cpu_count", 0, 1),
    ("hello", "hardware.cpu_count", MAX_CPUS + 1, MAX_CPUS),
    ("hello", "hardware.ram_bytes", -1, 0),
    ("hello", "hardware.ram_bytes", 2**80, BIG),
    ("hello", "hardware.ram_bytes", BIG + 1, BIG),
    ("hello", "runtimes.0.version", "1" * 65, "1" * 64),
    ("hello", "runtimes", _n(17, {"name": "litert", "version": "1"}),
     _n(16, {"name": "litert", "version": "1"})),
    ("hello", "accelerators", _n(17, "edgetpu"), _n(16, "edgetpu")),
    ("hello", "labels", {f"k{i}": "v" for i in range(65)}, {f"k{i}": "v" for i in range(64)}),
    ("hello", "labels.site", "v" * 257, "v" * 256),
    ("hello", "labels.site", "nul\x00", "nul"),
    ("hello", "labels.site", "\ud800", "\U0001f600"),
    ("state", "last_serial", -1, 0),
    ("state", "last_serial", 2**64, MAX_SERIAL),
    ("state", "seq", 2**63, 2**63 - 1),
    ("state", "seq", -1, 0),
    ("state", "detail", "d" * 1025, "d" * 1024),
    ("state", "active.serial", MAX_SERIAL + 1, MAX_SERIAL),
    ("state", "active.model_id", "m" * 129, "m" * 128),
    ("state", "active.version", "v" * 65, "v" * 64),
    ("state", "active.target", "t" * 33, "t" * 32),
    ("state", "previous.serial", -1, 0),
    ("state", "progress.serial", 0, 1),
    ("state", "progress.serial", MAX_SERIAL + 1, MAX_SERIAL),
    ("state", "progress.done_bytes", BIG + 1, BIG),
    ("state", "progress.total_bytes", BIG + 1, BIG),
    ("state", "progress.attempts", 1_000_001, 1_000_000),
    ("state", "progress.last_error", "e" * 513, "e" * 512),
    ("state", "last_outcome.serial", MAX_SERIAL + 1, MAX_SERIAL),
    ("state", "last_outcome.reason", "r" * 1025, "r" * 1024),
    ("telemetry", "models.0.requests", 2**31, 2**31 - 1),
    ("telemetry", "models.0.requests", -1, 0),
    ("telemetry", "models.0.errors", 2**31, 2**31 - 1),
    ("telemetry", "models.0.client_errors", 2**31, 2**31 - 1),
    ("telemetry", "models.0.model_id", "m" * 129, "m" * 128),
    ("telemetry", "models.0.version", "v" * 65, "v" * 64),
    ("telemetry", "models.0.latency_ms.p50", -0.001, 0.0),
    ("telemetry", "models.0.latency_ms.p50", 1.0000001e7, 1e7),
    ("telemetry", "models.0.latency_ms.p95", 1e308, 1e7),
    ("telemetry", "models.0.latency_ms.p99", 1.0000001e7, 1e7),
    ("telemetry", "models.0.latency_ms.max", 1.0000001e7, 1e7),
    ("telemetry", "models.0.throughput_rps", 1.0000001e9, 1e9),
    ("telemetry", "models.0.throughput_rps", -1.0, 0.0),
    ("telemetry", "models", _n(65, None), _n(64, None)),  # None: filled with the sample's stats
    ("telemetry", "system.cpu_percent", 100.01, 100.0),
    ("telemetry", "system.cpu_percent", -0.01, 0.0),
    ("telemetry", "system.process_cpu_percent", 100.0 * MAX_CPUS + 0.01, 100.0 * MAX_CPUS),
    ("telemetry", "system.temperature_c", 250.01, 250.0),
    ("telemetry", "system.temperature_c", -100.01, -100.0),
    ("telemetry", "system.rss_bytes", BIG + 1, BIG),
    ("telemetry", "system.mem_used_bytes", BIG + 1, BIG),
    ("telemetry", "system.mem_total_bytes", BIG + 1, BIG),
    ("telemetry", "system.disk_free_bytes", BIG + 1, BIG),
    ("telemetry", "system.disk_free_bytes", -1, 0),
    ("event", "serial", MAX_SERIAL + 1, MAX_SERIAL),
    ("event", "model_id", "m" * 129, "m" * 128),
    ("event", "version", "v" * 65, "v" * 64),
    ("event", "reason", "r" * 2049, "r" * 2048),
    ("event", "figures.max_abs_error", float(BIG) * 1.01, float(BIG)),
    ("event", "figures.max_abs_error", -float(BIG) * 1.01, -float(BIG)),
    ("event", "figures", _dict(65), _dict(64)),
    ("fetch", "indices.0", MAX_CHUNKS, MAX_CHUNKS - 1),
    ("fetch", "indices.0", -1, 0),
    ("fetch", "indices", _n(MAX_CHUNKS + 1, 7), list(range(MAX_CHUNKS))),
    ("command", "reason", "r" * 1025, "r" * 1024),
    ("manifest", "signature_b64", "A" * 129, SAMPLES["manifest"].signature_b64),
]  # fmt: skip


def _bound_payload(kind, path, value):
    if kind == "telemetry" and path == "models":
        value = [BASES["telemetry"]["models"][0]] * len(value)
    return _with(kind, path, value)


def _ids(rows):
    return [f"{row[0]}:{row[1]}:{str(row[2])[:12]}" for row in rows]


@pytest.mark.parametrize(("kind", "path", "bad", "ok"), BOUNDS, ids=_ids(BOUNDS))
def test_each_bound_refuses_past_it_and_accepts_at_it(kind, path, bad, ok):
    with pytest.raises(FieldBoundError) as err:
        decode(_bound_payload(kind, path, bad), KINDS[kind])
    assert err.value.kind == kind
    assert err.value.field == path
    assert isinstance(err.value, WireFormatError)
    decoded = decode(_bound_payload(kind, path, ok), KINDS[kind])
    assert decode(encode(decoded), KINDS[kind]) == decoded


@pytest.mark.parametrize(("kind", "key"), [("hello", "labels"), ("event", "figures")])
def test_dict_keys_are_length_bounded(kind, key):
    value = 1.0 if kind == "event" else "v"
    with pytest.raises(FieldBoundError) as err:
        decode(_with(kind, key, {"k" * 65: value}), KINDS[kind])
    assert err.value.field.startswith(f"{key}.k")
    assert err.value.field.endswith("[key]")
    decode(_with(kind, key, {"k" * 64: value}), KINDS[kind])


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("telemetry", "models.0.latency_ms.p95"),
        ("telemetry", "models.0.throughput_rps"),
        ("telemetry", "system.cpu_percent"),
        ("telemetry", "system.temperature_c"),
        ("event", "figures.max_abs_error"),
    ],
)
@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e999", "1e308"])
def test_non_finite_and_huge_floats_are_refused(kind, path, literal):
    body = copy.deepcopy(BASES[kind])
    _set(body, path, "@@")
    payload = _payload(kind, body).replace(b'"@@"', literal.encode())
    with pytest.raises(FieldBoundError) as err:
        decode(payload, KINDS[kind])
    assert err.value.field == path


def test_every_wire_float_is_finite_even_where_unbounded():
    body = copy.deepcopy(BASES["manifest"])
    body["manifest"]["golden"]["atol"] = "@@"
    payload = _payload("manifest", body).replace(b'"@@"', b"Infinity")
    with pytest.raises(FieldBoundError) as err:
        decode(payload, SignedManifest)
    assert err.value.field == "manifest.golden.atol"  # without the JsonValue member tags
    assert err.value.code == "finite_number"
    data = make_manifest().model_dump()
    data["golden"]["atol"] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        type(make_manifest()).model_validate(data)


def _signed(body):
    signature = KEY.sign(canonical_json(body))
    return SignedManifest(
        manifest=body,
        key_id=key_id(PUB),
        signature_b64=base64.b64encode(signature).decode("ascii"),
    )


# Manifest fields are checked after the signature: (field path, past the bound, at it).
MANIFEST_BOUNDS = [
    ("serial", MAX_SERIAL + 1, MAX_SERIAL),
    ("latency_budget_ms", 1.0000001e7, 1e7),
    ("latency_budget_ms", 0.0, 1e-3),
    ("health.min_requests", 2**31, 2**31 - 1),
    ("signature.inputs.0.shape.1", 2**31, 2**31 - 1),
    ("signature.inputs.0.shape.1", -1, 0),
    ("artifact.size", DEFAULT_LIMITS.max_artifact_bytes + 1, None),
    ("artifact.chunk_size", DEFAULT_LIMITS.max_chunk_bytes + 1, None),
]


MANIFEST_IDS = _ids([("manifest", *row) for row in MANIFEST_BOUNDS])


@pytest.mark.parametrize(("path", "bad", "ok"), MANIFEST_BOUNDS, ids=MANIFEST_IDS)
def test_each_manifest_bound_is_named_after_the_signature_checks(path, bad, ok):
    body = make_manifest().model_dump(mode="json")
    _set(body, path, bad)
    with pytest.raises(FieldBoundError) as err:
        verify_manifest(_signed(body), PUB, now=NOW)
    assert (err.value.kind, err.value.field) == ("manifest", path)
    if ok is not None:
        _set(body, path, ok)
        assert verify_manifest(_signed(body), PUB, now=NOW).manifest


def test_a_manifest_with_more_chunks_than_a_fetch_may_name_is_refused():
    data = make_manifest().model_dump(mode="json")
    data["artifact"]["chunk_sha256"] = [SHA_A] * (MAX_CHUNKS + 1)
    with pytest.raises(FieldBoundError) as err:
        verify_manifest(_signed(data), PUB, now=NOW)
    assert err.value.field == "artifact.chunk_sha256"


def test_shape_errors_name_the_field_too():
    body = copy.deepcopy(BASES["hello"])
    del body["hardware"]["cpu_count"]
    with pytest.raises(InvalidFieldError) as err:
        decode(_payload("hello", body), type(SAMPLES["hello"]))
    assert not isinstance(err.value, FieldBoundError)
    assert (err.value.field, err.value.code) == ("hardware.cpu_count", "missing")


def test_a_bound_is_named_before_a_shape_error():
    body = copy.deepcopy(BASES["hello"])
    body["surprise"] = 1
    body["hardware"]["ram_bytes"] = 2**80
    with pytest.raises(FieldBoundError) as err:
        decode(_payload("hello", body), type(SAMPLES["hello"]))
    assert err.value.field == "hardware.ram_bytes"
    assert err.value.errors == 2


def test_a_hostile_key_is_shortened_in_the_field_path():
    body = copy.deepcopy(BASES["hello"])
    body["labels"] = {"k" * 100_000: "v"}
    with pytest.raises(FieldBoundError) as err:
        decode(_payload("hello", body), type(SAMPLES["hello"]))
    assert len(err.value.field) <= 256
    assert len(str(err.value)) < 1024


# --- before parsing: size, depth, integer length, encoding ------------------------------------


@pytest.mark.parametrize("decoder", ["decode", "decode_any", "decode_versioned"])
@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b"{" * 100_000,
        b'{"v":2,"kind":"hello","body":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001,
        b'{"v":2,"kind":"hello","body":{"labels":' + b"[" * 33 + b"]" * 33 + b"}}",
    ],
    ids=["array", "unclosed", "body", "just-past"],
)
def test_deep_nesting_is_refused_before_parsing(decoder, payload):
    with pytest.raises(PayloadTooDeepError) as err:
        _decoders()[decoder](payload)
    assert err.value.limit == DEFAULT_LIMITS.max_json_depth


def _decoders():
    hello = type(SAMPLES["hello"])
    return {
        "decode": lambda p: decode(p, hello),
        "decode_any": decode_any,
        "decode_versioned": lambda p: decode_versioned(p, hello),
    }


def test_nesting_depth_ignores_brackets_inside_strings():
    assert not nesting_depth_exceeds(b'["[[[[[[", "\\"[[[[[["]', 1)
    assert nesting_depth_exceeds(b'[["\\\\"]]', 1)  # an escaped backslash ends no string
    assert not nesting_depth_exceeds(b"[" * 32 + b"]" * 32, 32)
    assert nesting_depth_exceeds(b"[" * 33 + b"]" * 33, 32)
    assert not nesting_depth_exceeds(b'"' + b'\\"[' * 1000, 1)  # unterminated string
    body = _with("event", "reason", "[" * 2048)
    assert decode(body, type(SAMPLES["event"])).reason == "[" * 2048


@pytest.mark.parametrize(
    "payload",
    [
        b'"' + b'\\"[' * 300_000,  # unterminated: a backtracking scan would be quadratic
        b"[" + b'"[",' * 250_000 + b"1]",
        b"[" * 32 + b"1," * 400_000 + b"1" + b"]" * 32,
    ],
    ids=["unterminated-escapes", "bracket-strings", "wide"],
)
def test_the_depth_scan_is_linear_on_a_full_size_payload(payload):
    started = time.perf_counter()
    with contextlib.suppress(WireFormatError):
        decode_any(payload)
    assert time.perf_counter() - started < 2.0


def test_every_sample_nests_well_within_the_limit():
    for message in SAMPLES.values():
        assert not nesting_depth_exceeds(encode(message), DEFAULT_LIMITS.max_json_depth // 2)


def test_integer_literals_past_the_digit_limit_are_refused_before_conversion():
    digits = DEFAULT_LIMITS.max_int_digits
    too_long = _with("state", "last_serial", "@@").replace(b'"@@"', b"9" * (digits + 700))
    with pytest.raises(MalformedPayloadError, match="digits"):
        decode(too_long, DeviceState)
    with pytest.raises(MalformedPayloadError, match="digits"):
        decode_any(b"[" + b"1" * 5000 + b"]")
    # Up to the limit the literal is converted, and the field it lands in is named.
    at_limit = _with("state", "last_serial", "@@").replace(b'"@@"', b"9" * digits)
    with pytest.raises(FieldBoundError) as err:
        decode(at_limit, DeviceState)
    assert err.value.field == "last_serial"


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe", b'{"v":2,"kind":"hello","body":{"os":"\xc3"}}', "é".encode("utf-16")],
)
def test_invalid_utf8_is_refused(payload):
    with pytest.raises(MalformedPayloadError, match="UTF-8"):
        decode_any(payload)


def test_oversize_payload_is_refused_with_its_size():
    payload = encode(SAMPLES["hello"])
    with pytest.raises(PayloadTooLargeError) as err:
        decode(payload, type(SAMPLES["hello"]), max_bytes=100)
    assert (err.value.size, err.value.limit) == (len(payload), 100)
    with pytest.raises(PayloadTooLargeError):
        decode_any(b" " * (DEFAULT_LIMITS.max_message_bytes + 1))


def _frame(head: bytes, data: bytes = b"x") -> bytes:
    return CHUNK_MAGIC + _HEADER_LEN.pack(len(head)) + head + data


def _header(**fields):
    values = {"v": CHUNK_FRAME_VERSION, "sha256": SHA_A, "index": 0, "count": 1,
              "chunk_sha256": SHA_A} | fields  # fmt: skip
    return json.dumps(values).encode()


@pytest.mark.parametrize(
    ("fields", "path"),
    [({"index": MAX_CHUNKS, "count": MAX_CHUNKS}, "index"), ({"index": -1}, "index"),
     ({"count": MAX_CHUNKS + 1}, "count"), ({"count": 0}, "count")],
)  # fmt: skip
def test_chunk_header_bounds(fields, path):
    with pytest.raises(FieldBoundError) as err:
        decode_chunk_frame(_frame(_header(**fields)))
    assert (err.value.kind, err.value.field) == ("chunk", path)
    header, _ = decode_chunk_frame(_frame(_header(index=MAX_CHUNKS - 1, count=MAX_CHUNKS)))
    assert header == ChunkHeader(
        sha256=SHA_A, index=MAX_CHUNKS - 1, count=MAX_CHUNKS, chunk_sha256=SHA_A
    )


@pytest.mark.parametrize(
    ("head", "error"),
    [
        (b"[" * 2000, PayloadTooDeepError),
        (b'{"v":1,"sha256":"\xff"}', MalformedPayloadError),
        (b'{"v":1,', MalformedPayloadError),
    ],
)
def test_chunk_header_is_bounded_before_parsing(head, error):
    with pytest.raises(error) as err:
        decode_chunk_frame(_frame(head))
    assert err.value.kind == "chunk"


# --- fuzzing: only WireFormatError escapes ----------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def mutated_bodies(kind):
    """A valid body of ``kind`` with one node (or the whole body) replaced by any JSON value."""
    return mutated(BASES[kind] if isinstance(kind, str) else kind)


def _only_wire_errors(call, payload):
    with contextlib.suppress(WireFormatError):
        call(payload)


@FUZZ
@given(payload=st.binary(max_size=512), kind=st.sampled_from(sorted(KINDS)))
def test_fuzz_arbitrary_bytes(payload, kind):
    _only_wire_errors(lambda p: decode(p, KINDS[kind]), payload)
    _only_wire_errors(decode_any, payload)
    _only_wire_errors(decode_chunk_frame, payload)
    _only_wire_errors(decode_chunk_frame, CHUNK_MAGIC + payload)


@FUZZ
@given(data=st.data(), kind=st.sampled_from(sorted(KINDS)), version=st.sampled_from([1, 2, 3]))
def test_fuzz_json_in_a_valid_envelope(data, kind, version):
    body = data.draw(json_values | mutated_bodies(kind))
    payload = _payload(kind, body, version)
    _only_wire_errors(lambda p: decode(p, KINDS[kind]), payload)
    _only_wire_errors(lambda p: decode_versioned(p, KINDS[kind]), payload)
    _only_wire_errors(decode_any, payload)


@FUZZ
@given(data=st.data())
def test_fuzz_signed_manifest_bodies(data):
    body = data.draw(mutated_bodies(make_manifest().model_dump(mode="json")))
    if not isinstance(body, dict):
        return
    try:
        signed = _signed(body)
    except ValueError:  # NaN cannot be signed; nothing to verify
        return
    with contextlib.suppress(WireFormatError, IntegrityError):
        verify_manifest(signed, PUB, now=NOW)


HEADER_FIELDS = st.sampled_from(["v", "sha256", "index", "count", "chunk_sha256"])


@FUZZ
@given(
    header=json_values
    | st.dictionaries(HEADER_FIELDS, json_values).map(lambda d: json.loads(_header()) | d),
    data=st.data(),
)
def test_fuzz_chunk_frames(header, data):
    head = json.dumps(header).encode()
    _only_wire_errors(decode_chunk_frame, _frame(head, data.draw(st.binary(max_size=16))))
    _only_wire_errors(decode_chunk_frame, CHUNK_MAGIC + struct.pack(">I", len(head) + 1) + head)


# --- what was valid stays valid ---------------------------------------------------------------


# Signed commands exist from wire v2 on (their refusal in v1 is tested in test_signing).
@pytest.mark.parametrize(
    ("kind", "version"),
    [(k, v) for k in sorted(KINDS) for v in (1, 2) if v == 2 or k != "signed_command"],
)
def test_every_sample_still_round_trips(kind, version):
    message = SAMPLES[kind]
    payload = encode(message, version=version)
    assert decode_versioned(payload, type(message)) == (version, message)
    assert decode_any(payload) == message


def test_the_rich_state_round_trips():
    state = decode(_payload("state", BASES["state"]), DeviceState)
    assert state.progress is not None
    assert state.last_outcome is not None
    assert decode(encode(state), DeviceState) == state


@FUZZ
@given(
    ram=st.integers(0, 2**53),
    cpus=st.integers(1, MAX_CPUS),
    requests=st.integers(0, 2**31 - 1),
    p95=st.floats(0, 1e7),
    temperature=st.floats(-100, 250) | st.none(),
    figure=st.floats(-float(2**53), float(2**53)),
    serial=st.integers(1, MAX_SERIAL),
)
def test_any_value_within_the_bounds_round_trips(
    ram, cpus, requests, p95, temperature, figure, serial
):
    hello = SAMPLES["hello"]
    hello = hello.model_copy(
        update={"hardware": hello.hardware.model_copy(update={"ram_bytes": ram, "cpu_count": cpus})}
    )
    telemetry = json.loads(encode(SAMPLES["telemetry"]))["body"]
    telemetry["models"][0]["requests"] = requests
    telemetry["models"][0]["latency_ms"]["p95"] = p95
    telemetry["system"]["temperature_c"] = temperature
    event = BASES["event"] | {"figures": {"x": figure}, "serial": serial}
    for kind, payload in [
        ("hello", encode(hello)),
        ("telemetry", _payload("telemetry", telemetry)),
        ("event", _payload("event", event)),
    ]:
        message = decode(payload, KINDS[kind])
        assert decode(encode(message), KINDS[kind]) == message


@pytest.mark.parametrize("serial", [1, MAX_SERIAL])
def test_a_manifest_signed_by_the_controller_still_verifies(serial):
    manifest = make_manifest(serial=serial, ttl=timedelta(days=365))
    signed = decode(encode(sign_manifest(manifest, KEY)), SignedManifest)
    assert verify_manifest(signed, PUB, now=NOW).manifest == manifest
