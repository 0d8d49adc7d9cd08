"""Refusing ONNX models that read data from outside the verified artifact (external data).

An ONNX tensor can keep its bytes in another file (``data_location = EXTERNAL`` with a
``location`` entry), which the runtime opens relative to the model, or at an absolute path:
a signed model could read any file the agent can read (its broker password) and return it as
output. An artifact is one verified file, so no external file is ever inside it: every model
naming external data is refused here, before any runtime sees it, whatever the runtime version.

``onnx`` is not an agent dependency, so this walks the ModelProto wire format itself, along
every path that can hold a TensorProto (graphs, subgraphs of node attributes, functions,
training graphs, sparse tensors), bounded in nesting and in fields read. It reads the file
through ``mmap``; the cost is linear in the number of protobuf fields, not in the size of the
weights (raw and packed data are skipped in one step). Anything it cannot read as a ModelProto
is refused too (a runtime would not load it either).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath, PureWindowsPath

from edgefleet.agent.errors import ModelLoadError

# protobuf's own default recursion limit: a runtime refuses deeper models anyway.
MAX_NESTING = 100
# Fields read along the walked paths. Weights are skipped in one step (raw_data, packed
# arrays), so real models stay far below; a file of unpacked scalars stops here, not minutes
# later (about 12 s on this 2-core x86 machine; a Pi core is a few times slower).
MAX_FIELDS = 20_000_000

_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_ORT_MEMORY = "*/_ORT_MEM_ADDR_/*"  # onnxruntime reads this "location" as a memory address


class _Kind(Enum):
    MODEL = "ModelProto"
    GRAPH = "GraphProto"
    NODE = "NodeProto"
    ATTRIBUTE = "AttributeProto"
    FUNCTION = "FunctionProto"
    TRAINING = "TrainingInfoProto"
    SPARSE = "SparseTensorProto"
    TENSOR = "TensorProto"
    ENTRY = "StringStringEntryProto"


# Every embedded-message field (onnx.proto field numbers) on a path from ModelProto to a
# TensorProto, named as in onnx.proto ("[]": repeated); all other fields are skipped.
_CHILDREN: dict[_Kind, dict[int, tuple[_Kind, str]]] = {
    _Kind.MODEL: {
        7: (_Kind.GRAPH, "graph"),
        20: (_Kind.TRAINING, "training_info[]"),
        25: (_Kind.FUNCTION, "functions[]"),
    },
    _Kind.TRAINING: {1: (_Kind.GRAPH, "initialization"), 2: (_Kind.GRAPH, "algorithm")},
    _Kind.FUNCTION: {7: (_Kind.NODE, "node[]"), 11: (_Kind.ATTRIBUTE, "attribute_proto[]")},
    _Kind.GRAPH: {
        1: (_Kind.NODE, "node[]"),
        5: (_Kind.TENSOR, "initializer[]"),
        15: (_Kind.SPARSE, "sparse_initializer[]"),
    },
    _Kind.NODE: {5: (_Kind.ATTRIBUTE, "attribute[]")},
    _Kind.ATTRIBUTE: {
        5: (_Kind.TENSOR, "t"),
        6: (_Kind.GRAPH, "g"),
        10: (_Kind.TENSOR, "tensors[]"),
        11: (_Kind.GRAPH, "graphs[]"),
        22: (_Kind.SPARSE, "sparse_tensor"),
        23: (_Kind.SPARSE, "sparse_tensors[]"),
    },
    _Kind.SPARSE: {1: (_Kind.TENSOR, "values"), 2: (_Kind.TENSOR, "indices")},
    _Kind.TENSOR: {13: (_Kind.ENTRY, "external_data[]")},
    _Kind.ENTRY: {},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


@dataclass(frozen=True, slots=True)
class ExternalTensor:
    """A tensor whose bytes live outside the model file."""

    where: str  # e.g. "graph.node[3].attribute[0].t"
    name: str
    location: str | None  # the "location" entry, None when there is none
    data_location: int  # 1 = EXTERNAL; 0 when only external_data entries are present

    @property
    def why(self) -> str:
        """Where it reads from, and what is wrong with that."""
        return _judge(self.location)[1]

    @property
    def escapes(self) -> bool:
        """Whether it names a place outside the model's directory (worse than a sibling)."""
        return _judge(self.location)[0]


def _judge(location: str | None) -> tuple[bool, str]:
    if location is None:
        return False, "with no location"
    shown = repr(location[:200])
    if location == _ORT_MEMORY:
        return True, f"from {shown}, which onnxruntime takes as a memory address"
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute():
        return True, f"from the absolute path {shown}"
    if ".." in location.replace("\\", "/").split("/"):
        return True, f"from {shown}, a path climbing out with '..'"
    return False, f"from the file {shown} beside the artifact"


class MalformedOnnxError(ModelLoadError):
    """The artifact is not a well-formed ONNX ModelProto (or nests deeper than any model)."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"not a well-formed ONNX model: {reason} at byte {offset}")
        self.reason = reason
        self.offset = offset


class ExternalDataError(ModelLoadError):
    """The model reads tensor data from files outside the verified artifact."""

    def __init__(self, tensors: list[ExternalTensor]) -> None:
        worst = next((t for t in tensors if t.escapes), tensors[0])
        more = f" (and {len(tensors) - 1} more external tensors)" if len(tensors) > 1 else ""
        super().__init__(
            f"external data is refused, it is not inside the artifact: tensor "
            f"{worst.name[:200]!r} ({worst.where}) reads {worst.why}{more}"
        )
        self.tensors = tuple(tensors)


class _Reader:
    """Bounded protobuf wire-format reading over a bytes-like buffer."""

    def __init__(self, data: bytes | mmap.mmap, max_fields: int) -> None:
        self.data = data
        self.budget = max_fields
        self.max_fields = max_fields

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        """Raises: MalformedOnnxError: truncated, or longer than 10 bytes / 64 bits."""
        result = shift = 0
        start = pos
        while True:
            if pos >= end:
                raise MalformedOnnxError("truncated varint", start)
            byte = self.data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                if result >> 64:
                    raise MalformedOnnxError("varint above 64 bits", start)
                return result, pos
            shift += 7
            if shift >= 70:
                raise MalformedOnnxError("varint longer than 10 bytes", start)

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """``(field number, wire type, value, position after)`` of each field in
        ``[start, end)``; for a length-delimited field ``value`` is where its bytes start
        and the position after is where they end.

        Raises:
            MalformedOnnxError: bad tag, group, or a field running past ``end``.
        """
        pos = start
        while pos < end:
            at = pos
            self.budget -= 1
            if self.budget < 0:
                raise MalformedOnnxError(f"more than {self.max_fields} protobuf fields", at)
            tag, pos = self.varint(pos, end)
            number, wire = tag >> 3, tag & 7
            if number == 0 or number > 0x1FFFFFFF:
                raise MalformedOnnxError(f"field number {number}", at)
            if wire == _VARINT:
                value, pos = self.varint(pos, end)
                yield number, wire, value, pos
            elif wire == _LEN:
                length, pos = self.varint(pos, end)
                if length > end - pos:
                    raise MalformedOnnxError(f"field {number} of {length} bytes runs past", at)
                yield number, wire, pos, pos + length
                pos += length
            elif wire in (_I64, _I32):
                size = 8 if wire == _I64 else 4
                if size > end - pos:
                    raise MalformedOnnxError(f"fixed field {number} runs past", at)
                yield number, wire, pos, pos + size
                pos += size
            else:  # groups (3, 4) appear in no ONNX message; 6 and 7 are no wire type
                raise MalformedOnnxError(f"wire type {wire} in field {number}", at)

    def text(self, start: int, end: int) -> str:
        return bytes(self.data[start : min(end, start + 4096)]).decode("utf-8", "replace")


def find_external_tensors(
    data: bytes | mmap.mmap, *, max_nesting: int = MAX_NESTING, max_fields: int = MAX_FIELDS
) -> list[ExternalTensor]:
    """Every tensor of a serialized ModelProto that keeps its data outside it.

    A tensor counts if its ``data_location`` is anything but DEFAULT or it has any
    ``external_data`` entry (a runtime may honour either).

    Raises:
        MalformedOnnxError: ``data`` is not a well-formed protobuf along the walked paths
            (a walked field with another wire type than its declared one counts), or it
            nests more than ``max_nesting`` messages deep, or holds more than ``max_fields``
            fields along them.
    """
    reader = _Reader(data, max_fields)
    found: list[ExternalTensor] = []
    # (kind, start, end, path, depth): an explicit stack, so no Python recursion limit
    stack: list[tuple[_Kind, int, int, str, int]] = [(_Kind.MODEL, 0, len(data), "", 0)]
    while stack:
        kind, start, end, path, depth = stack.pop()
        if depth > max_nesting:
            raise MalformedOnnxError(f"messages nest deeper than {max_nesting}", start)
        if kind is _Kind.TENSOR:
            tensor = _tensor(reader, start, end, path)
            if tensor is not None:
                found.append(tensor)
            continue
        children = _CHILDREN[kind]
        counts: dict[int, int] = {}
        inner: list[tuple[_Kind, int, int, str, int]] = []
        for number, wire, value, after in reader.fields(start, end):
            child = children.get(number)
            if child is None:
                continue
            if wire != _LEN:
                raise MalformedOnnxError(f"{kind.value} field {number} is not a message", value)
            child_kind, label = child
            if label.endswith("[]"):
                index = counts.get(number, 0)
                counts[number] = index + 1
                label = f"{label[:-2]}[{index}]"
            child_path = f"{path}.{label}" if path else label
            inner.append((child_kind, value, after, child_path, depth + 1))
        stack.extend(reversed(inner))  # depth first, in file order
    return found


def _tensor(reader: _Reader, start: int, end: int, path: str) -> ExternalTensor | None:
    """The tensor at ``[start, end)`` if it keeps data outside the model, else None."""
    name = ""
    data_location = 0
    entries: list[tuple[str, str]] = []
    for number, wire, value, after in reader.fields(start, end):
        if number == _TENSOR_NAME and wire == _LEN:
            name = reader.text(value, after)
        elif number == _TENSOR_DATA_LOCATION:
            if wire != _VARINT:
                raise MalformedOnnxError("TensorProto.data_location is not a varint", value)
            data_location = data_location or value  # any non-default occurrence counts
        elif number == _TENSOR_EXTERNAL_DATA:
            if wire != _LEN:
                raise MalformedOnnxError("TensorProto.external_data is not a message", value)
            entries.append(_entry(reader, value, after))
    if data_location == 0 and not entries:
        return None
    # A runtime takes one "location" (the last, in onnxruntime): name the worst in the reason.
    locations = [value for key, value in entries if key == "location"]
    location = next((v for v in locations if _judge(v)[0]), locations[-1] if locations else None)
    return ExternalTensor(path, name, location, data_location)


def _entry(reader: _Reader, start: int, end: int) -> tuple[str, str]:
    key = value = ""
    for number, wire, at, after in reader.fields(start, end):
        if wire != _LEN:
            continue
        if number == _ENTRY_KEY:
            key = reader.text(at, after)
        elif number == _ENTRY_VALUE:
            value = reader.text(at, after)
    return key, value


def check_self_contained(path: Path) -> None:
    """Refuse an ONNX model file that reads data from outside itself.

    Runs before any runtime opens the file, so no runtime version's own handling of
    external paths matters.

    Raises:
        ExternalDataError: a tensor keeps its data in another file (or a memory address).
        MalformedOnnxError: the file is not a well-formed ONNX model.
        OSError: the file could not be read.
    """
    with path.open("rb") as f:
        if f.seek(0, 2) == 0:
            return  # an empty ModelProto names nothing; the runtime refuses it
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            external = find_external_tensors(data)
    if external:
        raise ExternalDataError(external)
