"""ONNX external data packed into the model: weights kept in files beside a ``.onnx``
(``onnx.save(..., save_as_external_data=True)``) are read, from the model's own directory only,
into one self-contained ModelProto, since an artifact is one verified file (the agent refuses
external data). Every failure names the tensor and the file it reads."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx
from onnx import GraphProto, ModelProto, NodeProto, SparseTensorProto, TensorProto, helper

from edgefleet.controller.errors import ModelLoadError

# protobuf's limit on one serialized message: a self-contained ONNX file cannot be larger.
PROTOBUF_LIMIT = onnx.checker.MAXIMUM_PROTOBUF
# Element types narrower than a byte, packed two (or four) to a byte in raw_data.
_SUB_BYTE_BITS: dict[int, int] = {
    getattr(TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(TensorProto, name)
}


class ExternalDataError(ModelLoadError):
    """A tensor's external data cannot be packed: no location, a location outside the model's
    directory, a missing file, or fewer bytes than the tensor needs."""

    def __init__(self, model: Path, tensor: str, location: str | None, reason: str) -> None:
        where = f"from {location[:200]!r}" if location is not None else "with no location"
        super().__init__(
            str(model), f"tensor {tensor[:200]!r} reads external data {where}: {reason}"
        )
        self.tensor = tensor
        self.location = location


class ModelTooLargeError(ModelLoadError):
    """The model with its weights embedded is over protobuf's 2 GB limit for one file."""

    def __init__(self, model: Path, size: int) -> None:
        super().__init__(
            str(model),
            f"with its weights embedded it is {size:,} bytes, over protobuf's 2 GB limit "
            f"({PROTOBUF_LIMIT:,} bytes) for one ONNX file, and an artifact is one "
            "self-contained file: give a model under 2 GB (e.g. quantized or pruned where it "
            "was built)",
        )
        self.size = size
        self.limit = PROTOBUF_LIMIT


@dataclass(frozen=True)
class PackedExternalData:
    """What was read into the model: tensors, bytes, and the files they came from."""

    tensors: int
    bytes: int
    files: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"tensors": self.tensors, "bytes": self.bytes, "files": list(self.files)}


@dataclass(frozen=True)
class _Read:
    tensor: TensorProto
    name: str
    location: str
    file: Path
    offset: int
    length: int


def uses_external_data(tensor: TensorProto) -> bool:
    """Whether the tensor keeps (or claims to keep) its bytes outside the model."""
    return tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0


def external_tensors(model: ModelProto) -> Iterator[tuple[str, TensorProto]]:
    """Every tensor of the model that uses external data, with where it is, along every path
    that holds a TensorProto: graphs and their subgraphs, sparse tensors, functions and
    training graphs."""
    for where, tensor in _all_tensors(model):
        if uses_external_data(tensor):
            yield where, tensor


def pack_external_data(model: ModelProto, path: Path) -> PackedExternalData | None:
    """Read every external tensor of ``model`` (loaded from ``path`` without its external data)
    into the model, from files inside ``path``'s directory; None when it uses none.

    Everything is checked (locations, files, lengths, the total size) before any byte is read.

    Raises:
        ExternalDataError: a tensor has no location, one outside the directory (absolute, or
            climbing out with ``..`` or a symbolic link), a missing file, an offset or length
            that is not a number, or fewer or more bytes than its shape needs.
        ModelTooLargeError: the packed model would be over protobuf's 2 GB limit.
    """
    found = list(external_tensors(model))
    if not found:
        return None
    base = path.parent.resolve()
    reads = [_checked_read(path, base, where, tensor) for where, tensor in found]
    size = model.ByteSize() + sum(r.length for r in reads)
    if size > PROTOBUF_LIMIT:
        raise ModelTooLargeError(path, size)
    for read in reads:
        with read.file.open("rb") as f:
            f.seek(read.offset)
            data = f.read(read.length)
        if len(data) != read.length:  # the file shrank since it was checked
            raise ExternalDataError(
                path, read.name, read.location,
                f"the file ended after {len(data):,} of {read.length:,} bytes",
            )  # fmt: skip
        read.tensor.raw_data = data
        read.tensor.data_location = TensorProto.DEFAULT
        del read.tensor.external_data[:]
    files = tuple(sorted({r.location for r in reads}))
    return PackedExternalData(tensors=len(reads), bytes=sum(r.length for r in reads), files=files)


def save_self_contained(model: ModelProto, path: Path) -> Path:
    """Write ``model`` as one file with every tensor's bytes inside it.

    Raises:
        ExternalDataError: a tensor still refers to external data.
        ModelTooLargeError: over protobuf's 2 GB limit.
    """
    for _, tensor in external_tensors(model):
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        raise ExternalDataError(path, tensor.name, location, "not packed into the model")
    size = model.ByteSize()
    if size > PROTOBUF_LIMIT:
        raise ModelTooLargeError(path, size)
    onnx.save(model, str(path), save_as_external_data=False)
    return path


def _checked_read(model: Path, base: Path, where: str, tensor: TensorProto) -> _Read:
    name = tensor.name or where
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location")

    def refuse(reason: str) -> ExternalDataError:
        return ExternalDataError(model, name, location, reason)

    if not location:
        raise refuse(f"its external_data ({where}) names no file")
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute():
        raise refuse("an absolute path; external data is read only from the model's directory")
    file = (base / location).resolve()
    if not file.is_relative_to(base):
        raise refuse(f"outside the model's directory {str(base)!r} (it resolves to {str(file)!r})")
    if not file.is_file():
        raise refuse(f"no such file in {str(base)!r}")
    offset, length = _int_entry(entries, "offset", refuse), _int_entry(entries, "length", refuse)
    available = file.stat().st_size
    offset = offset or 0
    if length is None:
        length = max(available - offset, 0)
    if offset + length > available:
        raise refuse(
            f"the file is short: {available:,} bytes, the tensor reads bytes {offset:,} to "
            f"{offset + length:,}"
        )
    needed = _byte_size(tensor)
    if needed is not None and length != needed:
        dtype = TensorProto.DataType.Name(tensor.data_type)
        raise refuse(
            f"{length:,} bytes, but its shape {list(tensor.dims)} of {dtype} needs {needed:,}"
        )
    return _Read(tensor, name, location, file, offset, length)


def _int_entry(
    entries: dict[str, str], key: str, refuse: Callable[[str], ExternalDataError]
) -> int | None:
    value = entries.get(key)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise refuse(f"its {key} {value[:40]!r} is not a non-negative integer")
    return int(value)


def _byte_size(tensor: TensorProto) -> int | None:
    """Bytes of raw_data a tensor of this shape and type holds; None for types without a
    fixed width (strings, unknown types)."""
    count = math.prod(int(d) for d in tensor.dims)
    bits = _SUB_BYTE_BITS.get(tensor.data_type)
    if bits is not None:
        return (count * bits + 7) // 8
    if tensor.data_type in (TensorProto.UNDEFINED, TensorProto.STRING):
        return None
    try:
        itemsize = int(helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize)
    except (KeyError, ValueError, TypeError):
        return None
    return count * itemsize


def _all_tensors(model: ModelProto) -> Iterator[tuple[str, TensorProto]]:
    yield from _graph_tensors(model.graph, "graph")
    for i, function in enumerate(model.functions):
        yield from _node_tensors(function.node, f"functions[{i}]")
        for j, attribute in enumerate(function.attribute_proto):
            yield from _attribute_tensors(attribute, f"functions[{i}].attribute_proto[{j}]")
    for i, info in enumerate(model.training_info):
        yield from _graph_tensors(info.initialization, f"training_info[{i}].initialization")
        yield from _graph_tensors(info.algorithm, f"training_info[{i}].algorithm")


def _graph_tensors(graph: GraphProto, where: str) -> Iterator[tuple[str, TensorProto]]:
    for i, tensor in enumerate(graph.initializer):
        yield f"{where}.initializer[{i}]", tensor
    for i, sparse in enumerate(graph.sparse_initializer):
        yield from _sparse_tensors(sparse, f"{where}.sparse_initializer[{i}]")
    yield from _node_tensors(graph.node, where)


def _node_tensors(nodes: Iterable[NodeProto], where: str) -> Iterator[tuple[str, TensorProto]]:
    for i, node in enumerate(nodes):
        for j, attribute in enumerate(node.attribute):
            yield from _attribute_tensors(attribute, f"{where}.node[{i}].attribute[{j}]")


def _attribute_tensors(
    attribute: onnx.AttributeProto, where: str
) -> Iterator[tuple[str, TensorProto]]:
    if attribute.HasField("t"):
        yield f"{where}.t", attribute.t
    for i, tensor in enumerate(attribute.tensors):
        yield f"{where}.tensors[{i}]", tensor
    if attribute.HasField("g"):
        yield from _graph_tensors(attribute.g, f"{where}.g")
    for i, graph in enumerate(attribute.graphs):
        yield from _graph_tensors(graph, f"{where}.graphs[{i}]")
    if attribute.HasField("sparse_tensor"):
        yield from _sparse_tensors(attribute.sparse_tensor, f"{where}.sparse_tensor")
    for i, sparse in enumerate(attribute.sparse_tensors):
        yield from _sparse_tensors(sparse, f"{where}.sparse_tensors[{i}]")


def _sparse_tensors(sparse: SparseTensorProto, where: str) -> Iterator[tuple[str, TensorProto]]:
    yield f"{where}.values", sparse.values
    yield f"{where}.indices", sparse.indices
