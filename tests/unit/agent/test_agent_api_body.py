"""edgefleet.agent.api_body: request bodies are bounded before they are parsed, inflated or
allocated, and every refusal is the API's own client error with a reason."""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.agent.api_body import (
    JSON,
    NPY,
    NPZ,
    BodyLimits,
    BodyTooLargeError,
    RequestRejectedError,
    UnsupportedContentTypeError,
    decode_body,
    json_value_count,
    load_npy,
    load_npz,
)
from edgefleet.agent.errors import BadInputError
from edgefleet.shared import IOSignature, TensorSpec

MIB = 1024 * 1024
SIG = IOSignature(
    inputs=(TensorSpec(name="x", dtype="float32", shape=(None, 4)),),
    outputs=(TensorSpec(name="y", dtype="float32", shape=(None, 3)),),
)
TWO = IOSignature(
    inputs=(
        TensorSpec(name="a", dtype="float32", shape=(1, 4)),
        TensorSpec(name="ids", dtype="int64", shape=(None,)),
    ),
    outputs=(TensorSpec(name="y", dtype="float32", shape=(None,)),),
)
LIMITS = BodyLimits(max_request_bytes=16 * MIB, max_input_bytes=16 * MIB, max_json_values=500_000)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def npy_header(shape, descr: str = "<f4", version: tuple[int, int] = (1, 0), order="False"):
    literal = descr if descr[:1] in "[(" else repr(descr)  # a structured descr is a list
    text = f"{{'descr': {literal}, 'fortran_order': {order}, 'shape': {tuple(shape)!r}, }}"
    size_format, prefix = ("<H", 10) if version[0] == 1 else ("<I", 12)
    text += " " * (63 - (prefix + len(text)) % 64) + "\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(size_format, len(text)) + text.encode()


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def peak_bytes(call) -> tuple[object, int]:
    """``call()``'s result (or the error it raised) and the peak of memory it allocated."""
    tracemalloc.start()
    try:
        try:
            result: object = call()
        except BadInputError as e:
            result = e
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- .npy ------------------------------------------------------------------------------------


def test_npy_round_trips_as_a_view_of_the_body():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    body = npy(x)
    arrays = decode_body(NPY, body, SIG, LIMITS)
    np.testing.assert_array_equal(arrays["x"], x)
    assert arrays["x"].base is not None  # no copy of the data
    fortran = npy(np.asfortranarray(x))
    np.testing.assert_array_equal(decode_body(NPY, fortran, SIG, LIMITS)["x"], x)
    v2 = npy_header((3, 4), version=(2, 0)) + x.tobytes()
    np.testing.assert_array_equal(load_npy(v2, max_bytes=MIB), x)
    assert load_npy(npy_header((0, 4)), max_bytes=MIB).shape == (0, 4)
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }".ljust(56) + "\n"
    odd = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + x.tobytes()
    unaligned = load_npy(odd, max_bytes=MIB)  # data at offset 67
    assert unaligned.flags.aligned
    np.testing.assert_array_equal(unaligned, x)


@pytest.mark.parametrize(
    ("body", "error", "reason"),
    [
        (npy_header((2**40, 2**40)), BodyTooLargeError, "declares shape [1099511627776, 1099"),
        (npy_header((2**70,)), BodyTooLargeError, "over the limit of 1048576"),
        (npy_header((2**18 + 1, 1)) + bytes(2**20 + 4), BodyTooLargeError, "1048580 bytes"),
        (npy_header((-1, 4)), BadInputError, "negative dimension in its shape [-1, 4]"),
        (npy_header((0, 2**40)), BadInputError, "a dimension over 2147483647"),
        (npy_header((1,) * 33), BadInputError, "33 dimensions"),
        (npy_header((1, 4), "|O") + b"\x80\x04N.", BadInputError, "(a pickle)"),
        (npy_header((1,), "[('a', '<f4')]"), BadInputError, "takes numeric arrays"),
        (npy_header((1,), "('<f4', (4,))"), BadInputError, "takes numeric arrays"),
        (npy_header((1,), "<M8[s]") + bytes(8), BadInputError, "takes numeric arrays"),
        (npy_header((1, 4), version=(3, 0)), BadInputError, "version 3.0"),
        (npy_header((2, 4)) + bytes(31), BadInputError, "holds 31 bytes of array data"),
        (npy_header((2, 4)) + bytes(33), BadInputError, "holds 33 bytes of array data"),
        (npy_header((2, 4), order="1"), BadInputError, "fortran_order is not a valid bool"),
        (npy_header("nope"), BadInputError, "shape is not valid"),
        (b"\x93NUMPY\x01\x00\xff\xff{", BadInputError, "not an .npy array"),
        (b"\x93NUMPY\x01\x00" + b"\x10\x00{'shape': " + b"-" * 6 + b"1}\n", BadInputError, "npy"),
        (b"", BadInputError, "not an .npy array"),
    ],
)
def test_npy_refusals(body, error, reason):
    with pytest.raises(error) as info:
        load_npy(body, max_bytes=MIB)
    assert reason in str(info.value)


def test_a_huge_npy_shape_allocates_nothing():
    result, peak = peak_bytes(lambda: load_npy(npy_header((2**31 - 1,) * 8), max_bytes=MIB))
    assert isinstance(result, BodyTooLargeError)
    assert result.status == 413
    assert peak < 64 * 1024


def test_npy_needs_one_input_or_a_name():
    body = npy(np.zeros(3, np.int64))
    with pytest.raises(BadInputError, match=r"add \?input=<name>"):
        decode_body(NPY, body, TWO, LIMITS)
    assert set(decode_body(NPY, body, TWO, LIMITS, npy_inputs=["ids"])) == {"ids"}


# -- .npz ------------------------------------------------------------------------------------


def bomb(inflated_mib: int, declared_mib: int | None = None) -> bytes:
    """A deflated .npz of one float32 [N, 4] zeros member, inflating to ``inflated_mib``; its
    headers may declare another size (``declared_mib``) than it inflates to."""
    declared = (declared_mib if declared_mib is not None else inflated_mib) * MIB
    header = npy_header((declared // 16, 4))
    raw = header + bytes(inflated_mib * MIB)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", raw)
    data = bytearray(buffer.getvalue())
    if declared_mib is not None:  # lie in both the local header and the central directory
        for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
            at = data.index(signature) + offset
            data[at : at + 4] = struct.pack("<I", len(header) + declared)
    return bytes(data)


def test_npz_round_trips():
    a = np.ones((1, 4), np.float32)
    ids = np.arange(5, dtype=np.int64)
    arrays = decode_body(NPZ, npz(a=a, ids=ids), TWO, LIMITS)
    np.testing.assert_array_equal(arrays["a"], a)
    np.testing.assert_array_equal(arrays["ids"], ids)
    stored = zip_of({"a.npy": npy(a)}, zipfile.ZIP_STORED)
    np.testing.assert_array_equal(load_npz(stored, max_bytes=MIB)["a"], a)


def test_npz_bomb_is_refused_from_its_declared_size_before_inflating():
    body = bomb(64)
    assert len(body) < 100 * 1024
    result, peak = peak_bytes(lambda: load_npz(body, max_bytes=16 * MIB))
    assert isinstance(result, BodyTooLargeError)
    assert "archive inflates to 67108992 bytes, over the limit of 16777216" in str(result)
    assert peak < 256 * 1024


def test_npz_member_inflating_past_its_declared_size_is_cut_there():
    body = bomb(64, declared_mib=1)  # headers claim 1 MiB, the stream inflates to 64 MiB
    result, peak = peak_bytes(lambda: load_npz(body, max_bytes=16 * MIB))
    assert isinstance(result, BadInputError)
    assert "Bad CRC-32" in str(result)  # only the declared MiB was inflated, and it is wrong
    assert peak < 3 * MIB


@pytest.mark.parametrize(
    ("body", "error", "reason"),
    [
        (zip_of({"x.npy": npy(np.zeros(4))})[:-30], BadInputError, "not an .npz archive"),
        (b"not a zip", BadInputError, "not an .npz archive"),
        (zip_of({"x": npy(np.zeros((1, 4), np.float32))}), BadInputError, "is not an .npy array"),
        (zip_of({"x.npy": b"plain text"}), BadInputError, "is not an .npy array"),
        (
            zip_of({"x.npy": npy(np.zeros(1)), "y.npy": npy(np.zeros(1))} | {"x.npy": b""}),
            BadInputError,
            "",
        ),
        (
            zip_of({"x.npy": npy(np.zeros(1))}, zipfile.ZIP_BZIP2),
            BadInputError,
            "uses compression 12",
        ),
        (
            zip_of({f"m{i}.npy": npy(np.zeros(1)) for i in range(65)}, zipfile.ZIP_STORED),
            BodyTooLargeError,
            "archive of 65 or more members exceeds the limit of 64",
        ),
        (
            zip_of({"x.npy": npy_header((2**40, 4))}),
            BodyTooLargeError,
            "archive member 'x.npy' declares shape [1099511627776, 4]",
        ),
        (
            zip_of({"x.npy": npy_header((1, 4), "|O") + b"\x80\x04N."}),
            BadInputError,
            "(a pickle)",
        ),
    ],
)
def test_npz_refusals(body, error, reason):
    with pytest.raises(error) as info:
        load_npz(body, max_bytes=MIB)
    assert reason in str(info.value)


def test_an_empty_archive_is_no_arrays():
    assert load_npz(zip_of({}), max_bytes=MIB) == {}


def test_npz_duplicate_member_is_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", npy(np.zeros(1)))
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("x.npy", npy(np.ones(1)))
    with pytest.raises(BadInputError, match=r"holds 'x\.npy' twice"):
        load_npz(buffer.getvalue(), max_bytes=MIB)


def test_npz_members_are_limited_in_total_not_one_by_one():
    members = {f"m{i}.npy": npy(np.zeros(100_000, np.uint8)) for i in range(11)}
    with pytest.raises(BodyTooLargeError, match="archive inflates to 1101408 bytes"):
        load_npz(zip_of(members), max_bytes=MIB)


# -- JSON ------------------------------------------------------------------------------------


def test_json_value_count_bounds_what_parsing_builds():
    body = json.dumps({"inputs": {"x": [[1, 2, 3, 4], [5, 6, 7, 8]]}}).encode()
    # 2 dicts, 3 lists, 8 numbers, 2 keys: 15 objects
    assert json_value_count(body) == 15
    assert json_value_count(b"7") == 1
    assert json_value_count(b'"a,b:[{"') == 5  # marks inside strings only overcount


def test_json_values_are_bounded_by_the_model_inputs_before_parsing():
    fixed = IOSignature(
        inputs=(TensorSpec(name="a", dtype="float32", shape=(1, 4)),),
        outputs=(TensorSpec(name="y", dtype="float32", shape=(1,)),),
    )
    body = json.dumps({"inputs": {"a": [[1, 2, 3, 4]]}}).encode()
    assert set(decode_body(JSON, body, fixed, LIMITS)) == {"a"}
    spaced = json.dumps({"inputs": {"a": [[1, 2, 3, 4]] * 5}}).encode()
    with pytest.raises(BodyTooLargeError, match="exceeds the limit of 23 for this model"):
        decode_body(JSON, spaced, fixed, LIMITS)
    big = b'{"inputs": {"x": [' + b"0," * (MIB // 2) + b"0]}}"
    result, peak = peak_bytes(lambda: decode_body(JSON, big, SIG, LIMITS))
    assert isinstance(result, BodyTooLargeError)
    assert "exceeds the limit of 500000" in str(result)
    assert peak < 64 * 1024  # nothing parsed


def test_json_depth_and_integer_literals_are_bounded():
    deep = b'{"inputs": {"x": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}}"
    with pytest.raises(BadInputError, match="nests deeper than 32 levels"):
        decode_body(JSON, deep, SIG, LIMITS)
    huge = b'{"inputs": {"x": [[' + b"9" * 5000 + b", 1, 2, 3]]}}"
    with pytest.raises(BadInputError, match="integer literal of 5000 digits"):
        decode_body(JSON, huge, SIG, LIMITS)
    with pytest.raises(BadInputError, match="not UTF-8"):
        decode_body(JSON, b'{"inputs": "\xff"}', SIG, LIMITS)


def test_json_string_is_refused_before_numpy_widens_it():
    body = b'{"inputs": {"x": [["' + b"a" * 4 * MIB + b'"]]}}'
    result, peak = peak_bytes(lambda: decode_body(JSON, body, SIG, LIMITS))
    assert isinstance(result, BadInputError)
    assert "holds str values, expected numbers" in str(result)
    assert peak < 10 * MIB  # the text and the parsed string; numpy would add 16 MiB


def test_body_over_the_request_limit_and_unknown_content_type():
    small = BodyLimits(max_request_bytes=10, max_input_bytes=10, max_json_values=10)
    with pytest.raises(BodyTooLargeError, match="body of 11 bytes exceeds the limit of 10"):
        decode_body(JSON, b"x" * 11, SIG, small)
    with pytest.raises(UnsupportedContentTypeError) as info:
        decode_body("text/plain", b"{}", SIG, LIMITS)
    assert info.value.status == 415


# -- only the API's own client errors escape -------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=40,
)


def npy_like() -> st.SearchStrategy[bytes]:
    shapes = st.lists(st.integers(-(2**70), 2**70) | st.integers(0, 5), max_size=5)
    descrs = st.sampled_from(
        ["<f4", "<i8", "|b1", "|O", "<U3", "[('a', '<f4')]", "<c8", ">f4", "|V4", "<M8", "x"]
    )
    headers = st.builds(
        npy_header, shapes, descrs, st.sampled_from([(1, 0), (2, 0), (3, 0), (9, 9)])
    )
    return st.builds(lambda h, tail: h + tail, headers, st.binary(max_size=80))


def npz_like() -> st.SearchStrategy[bytes]:
    members = st.dictionaries(
        st.sampled_from(["x.npy", "a.npy", "ids.npy", "x", "y.npy"]),
        npy_like() | st.binary(max_size=40),
        max_size=3,
    )
    methods = st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
    archives = st.builds(zip_of, members, methods)

    def damaged(data: bytes, at: int, junk: bytes) -> bytes:
        at %= len(data) + 1
        return data[:at] + junk + data[at + len(junk) :]

    return archives | st.builds(damaged, archives, st.integers(0, 10_000), st.binary(max_size=8))


def check_only_client_errors(content_type: str, body: bytes, signature: IOSignature) -> None:
    try:
        arrays = decode_body(content_type, body, signature, LIMITS, npy_inputs=["ids"])
    except BadInputError as e:  # anything else fails the test
        error = e
    else:
        assert all(isinstance(a, np.ndarray) for a in arrays.values())
        if content_type == JSON:  # JSON is cast to the signature, so it is checked already
            assert set(arrays) == {spec.name for spec in signature.inputs}
        return
    status = error.status if isinstance(error, RequestRejectedError) else 400
    assert 400 <= status < 500
    assert str(error)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.sampled_from([JSON, NPY, NPZ, "text/plain"]), st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_client_errors(content_type, body):
    check_only_client_errors(content_type, body, TWO)


@FUZZ
@given(JSON_VALUES)
def test_arbitrary_json_raises_only_client_errors(value):
    for payload in (value, {"inputs": value}, {"inputs": {"a": value, "ids": value}}):
        body = json.dumps(payload).encode()
        check_only_client_errors(JSON, body, TWO)


@FUZZ
@given(npy_like())
def test_npy_like_bodies_raise_only_client_errors(body):
    check_only_client_errors(NPY, body, TWO)


@FUZZ
@given(npz_like())
def test_npz_like_bodies_raise_only_client_errors(body):
    check_only_client_errors(NPZ, body, TWO)


@FUZZ
@given(st.binary(min_size=1, max_size=64), st.integers(0, 1 << 16))
def test_deflate_streams_of_any_bytes_raise_only_client_errors(junk, declared):
    data = zlib.compress(junk)[2:-4]  # a raw deflate stream, as zip stores it
    header = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0, zlib.crc32(junk), len(data), declared)
    name = b"x.npy"
    local = b"PK\x03\x04" + header + struct.pack("<HH", len(name), 0) + name
    central = b"PK\x01\x02" + struct.pack("<H", 20) + header
    central += struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, 0) + name
    offset = len(local) + len(data)
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central), offset, 0)
    check_only_client_errors(NPZ, local + data + central + end, TWO)
