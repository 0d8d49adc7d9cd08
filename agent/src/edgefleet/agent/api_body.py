"""Decoding local inference request bodies within bounds: JSON, ``.npy`` and ``.npz``.

Nothing is parsed, inflated or allocated before its size is known to fit. JSON is measured
(bytes, values, nesting depth) before it is parsed; an ``.npy`` header's shape and dtype are
checked against the limit and against the bytes that follow it before an array is made (the
array is then a view of the body, not a copy); an ``.npz`` member's declared size is checked
before it is inflated, and inflating stops at that size. Object (pickled) arrays are refused.
Every refusal is a :class:`BadInputError`, a :class:`RequestRejectedError` where its HTTP
status is not 400, and nothing else escapes :func:`decode_body`.
"""

from __future__ import annotations

import io
import math
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from edgefleet.agent.errors import BadInputError
from edgefleet.agent.inputs import arrays_from_json, json_value_budget
from edgefleet.agent.runtimes import Array
from edgefleet.shared.bounds import MAX_TENSOR_DIM
from edgefleet.shared.errors import PayloadTooLargeError, WireFormatError
from edgefleet.shared.manifest import IOSignature
from edgefleet.shared.wire import parse_json

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
CONTENT_TYPES = (JSON, NPY, NPZ)

MAX_RANK = 32  # TensorSpec allows 16 dimensions; numpy 64
# An archive's central directory has one record per member, each opening with this signature;
# counting it bounds the members zipfile would build objects for, before it reads any.
_CENTRAL_RECORD = b"PK\x01\x02"
_MAX_ARCHIVE_MEMBERS = 64  # IOSignature holds at most 64 inputs
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,  # a compression method zipfile lacks
    RuntimeError,  # an encrypted member
)


class RequestRejectedError(BadInputError):
    """A request body refused with an HTTP status other than 400 (its reason is the message)."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class BodyTooLargeError(RequestRejectedError):
    """The body, or what it decodes to, is over a limit (413)."""

    def __init__(self, reason: str, *, size: int, limit: int) -> None:
        super().__init__(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, reason)
        self.size = size
        self.limit = limit


class UnsupportedContentTypeError(RequestRejectedError):
    """A Content-Type the API does not take (415)."""

    def __init__(self, content_type: str) -> None:
        super().__init__(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"unsupported Content-Type {content_type!r}; use {', '.join(CONTENT_TYPES)}",
        )
        self.content_type = content_type


@dataclass(frozen=True)
class BodyLimits:
    """The bounds of one request body (from the agent's settings)."""

    max_request_bytes: int
    max_input_bytes: int
    max_json_values: int


def decode_body(
    content_type: str,
    body: bytes,
    signature: IOSignature,
    limits: BodyLimits,
    *,
    npy_inputs: Sequence[str] = (),
) -> dict[str, Array]:
    """The named arrays a request body carries, decoded within ``limits``.

    ``npy_inputs`` names the input an ``.npy`` body is for (``?input=<name>``); without it the
    model must take exactly one input. The arrays are not yet checked against ``signature``'s
    dtypes and shapes (``Agent.infer`` does that), except JSON, which is cast to them.

    Raises:
        BodyTooLargeError: the body, its JSON values or its decoded arrays are over a limit.
        UnsupportedContentTypeError: not JSON, ``.npy`` or ``.npz``.
        BadInputError: anything else malformed, with the reason.
    """
    if len(body) > limits.max_request_bytes:
        raise _body_too_large(len(body), limits.max_request_bytes)
    if content_type == JSON:
        return _decode_json(body, signature, limits)
    if content_type == NPY:
        names = list(npy_inputs) or [spec.name for spec in signature.inputs]
        if len(names) != 1:
            raise BadInputError("x-npy carries one array: add ?input=<name>")
        return {names[0]: load_npy(body, max_bytes=limits.max_input_bytes)}
    if content_type == NPZ:
        return load_npz(body, max_bytes=limits.max_input_bytes)
    raise UnsupportedContentTypeError(content_type)


def json_value_count(body: bytes) -> int:
    """An upper bound on the values and keys JSON ``body`` parses into, without parsing it.

    Every value but the first follows a comma, a colon or an opening bracket (brackets, commas
    and colons inside strings count too, so this never undercounts). Four byte counts: no copy.
    """
    return sum(body.count(mark) for mark in (b",", b":", b"[", b"{")) + 1


def _decode_json(body: bytes, signature: IOSignature, limits: BodyLimits) -> dict[str, Array]:
    budget = json_value_budget(
        signature, max_input_bytes=limits.max_input_bytes, max_json_values=limits.max_json_values
    )
    values = json_value_count(body)
    if values > budget:
        raise BodyTooLargeError(
            f"JSON body of up to {values} values (commas, colons and brackets counted) exceeds "
            f"the limit of {budget} for this model's inputs",
            size=values,
            limit=budget,
        )
    try:
        payload = parse_json(body, max_bytes=limits.max_request_bytes)
    except PayloadTooLargeError as e:  # unreachable after the check above; kept as a backstop
        raise _body_too_large(len(body), limits.max_request_bytes) from e
    except WireFormatError as e:  # not UTF-8, not JSON, nested too deep, huge integer literal
        raise BadInputError(f"body is not acceptable JSON: {e}") from e
    return arrays_from_json(signature, payload)


def load_npy(data: bytes, *, max_bytes: int, what: str = "body") -> Array:
    """The ``.npy`` array in ``data``, a read-only view of it, once its header is checked.

    Raises:
        BodyTooLargeError: the header declares more than ``max_bytes`` of data.
        BadInputError: not ``.npy``, an unsupported version or dtype, a bad shape, or a data
            length other than the header declares.
    """
    stream = io.BytesIO(data)
    shape, fortran_order, dtype = _read_npy_header(stream, what)
    count, nbytes = _checked_size(shape, dtype, max_bytes, what)
    offset = stream.tell()
    _check_data_length(len(data) - offset, nbytes, shape, dtype, what)
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset) if count else None
    return _shaped(flat, shape, dtype, fortran_order)


def load_npz(data: bytes, *, max_bytes: int) -> dict[str, Array]:
    """The arrays of the ``.npz`` archive in ``data``, each member's size checked before it is
    inflated (declared sizes against ``max_bytes`` in total, then each ``.npy`` header).

    Raises:
        BodyTooLargeError: the members declare more than ``max_bytes`` in total, or too many.
        BadInputError: not a zip of ``.npy`` members, a duplicate name, an unsupported
            compression, a corrupt member, or a member as :func:`load_npy` refuses.
    """
    _check_members(data.count(_CENTRAL_RECORD))
    arrays: dict[str, Array] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            _check_members(len(infos))
            declared = sum(info.file_size for info in infos)
            if declared > max_bytes:
                raise BodyTooLargeError(
                    f"archive inflates to {declared} bytes, over the limit of {max_bytes}",
                    size=declared,
                    limit=max_bytes,
                )
            for info in infos:
                name = _member_name(info, arrays)
                with archive.open(info) as member:
                    arrays[name] = _read_member(member, info, max_bytes)
    except BadInputError:
        raise
    except _ZIP_ERRORS as e:
        raise BadInputError(f"body is not an .npz archive: {e}") from e
    return arrays


def _body_too_large(size: int, limit: int) -> BodyTooLargeError:
    return BodyTooLargeError(
        f"body of {size} bytes exceeds the limit of {limit}", size=size, limit=limit
    )


def _check_members(count: int) -> None:
    if count > _MAX_ARCHIVE_MEMBERS:
        raise BodyTooLargeError(
            f"archive of {count} or more members exceeds the limit of {_MAX_ARCHIVE_MEMBERS}",
            size=count,
            limit=_MAX_ARCHIVE_MEMBERS,
        )


def _member_name(info: zipfile.ZipInfo, seen: dict[str, Array]) -> str:
    if not info.filename.endswith(".npy"):
        raise BadInputError(f"archive member {info.filename!r} is not an .npy array")
    name = info.filename.removesuffix(".npy")
    if name in seen:
        raise BadInputError(f"archive holds {info.filename!r} twice")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise BadInputError(
            f"archive member {info.filename!r} uses compression {info.compress_type}; "
            "the API takes stored or deflated members"
        )
    return name


def _read_member(member: IO[bytes], info: zipfile.ZipInfo, max_bytes: int) -> Array:
    what = f"archive member {info.filename!r}"
    shape, fortran_order, dtype = _read_npy_header(member, what)
    count, nbytes = _checked_size(shape, dtype, max_bytes, what)
    _check_data_length(info.file_size - member.tell(), nbytes, shape, dtype, what)
    raw = member.read(nbytes)  # inflates no further than the member's declared size
    _check_data_length(len(raw), nbytes, shape, dtype, what)
    flat = np.frombuffer(raw, dtype=dtype, count=count) if count else None
    return _shaped(flat, shape, dtype, fortran_order)


def _read_npy_header(stream: IO[bytes], what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_2_0(stream)
        else:
            major, minor = version
            raise BadInputError(f"{what} is .npy version {major}.{minor}; the API takes 1.0, 2.0")
    # numpy parses the header with ast.literal_eval (which recurses on nested operators), and
    # retries a header it cannot parse through tokenize, as if Python 2 had written it
    except (ValueError, TypeError, RecursionError, SyntaxError, tokenize.TokenError) as e:
        raise BadInputError(f"{what} is not an .npy array: {e}") from e
    if dtype.hasobject:
        raise BadInputError(f"{what} holds Python objects (a pickle); they are refused")
    if dtype.kind not in "biufc" or dtype.names is not None or dtype.subdtype is not None:
        raise BadInputError(f"{what} has dtype {dtype}; the API takes numeric arrays")
    return shape, fortran_order, dtype


def _checked_size(
    shape: tuple[int, ...], dtype: np.dtype, max_bytes: int, what: str
) -> tuple[int, int]:
    if len(shape) > MAX_RANK:
        raise BadInputError(f"{what} has {len(shape)} dimensions; at most {MAX_RANK}")
    if any(dim < 0 for dim in shape):
        raise BadInputError(f"{what} has a negative dimension in its shape {list(shape)}")
    count = math.prod(shape)  # Python integers: no overflow, however large the shape
    nbytes = count * dtype.itemsize
    if nbytes > max_bytes or (count and max(shape, default=0) > MAX_TENSOR_DIM):
        raise BodyTooLargeError(
            f"{what} declares shape {list(shape)} of {dtype}, {nbytes} bytes, over the limit "
            f"of {max_bytes}",
            size=nbytes,
            limit=max_bytes,
        )
    if max(shape, default=0) > MAX_TENSOR_DIM:  # empty, but no tensor has such a dimension
        raise BadInputError(f"{what} has a dimension over {MAX_TENSOR_DIM}: {list(shape)}")
    return count, nbytes


def _check_data_length(
    available: int, nbytes: int, shape: tuple[int, ...], dtype: np.dtype, what: str
) -> None:
    if available != nbytes:
        raise BadInputError(
            f"{what} holds {available} bytes of array data; its shape {list(shape)} and "
            f"dtype {dtype} need {nbytes}"
        )


def _shaped(
    flat: Array | None, shape: tuple[int, ...], dtype: np.dtype, fortran_order: bool
) -> Array:
    if flat is None:  # no elements: nothing to read (and frombuffer refuses an empty buffer)
        try:
            return np.empty(shape, dtype)
        except ValueError as e:  # numpy sizes even an empty shape: (0, 2**31, 2**31, ...)
            raise BadInputError(f"array of shape {list(shape)} is not possible: {e}") from e
    if not flat.flags.aligned:  # a header padded oddly: runtimes may want aligned data
        flat = flat.copy()
    if fortran_order:
        return np.ascontiguousarray(flat.reshape(shape, order="F"))
    return flat.reshape(shape)
