"""edgefleet.agent.onnx_external: external data is found wherever a tensor can hide, checked
against the onnx package's own parser, and refused before onnxruntime opens the file."""

from __future__ import annotations

import errno
import os
import threading
import time

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from edgefleet.agent.errors import ModelLoadError
from edgefleet.agent.onnx_external import (
    _CHILDREN,
    ExternalDataError,
    MalformedOnnxError,
    _Kind,
    check_self_contained,
    find_external_tensors,
)
from edgefleet.agent.runtimes.onnx import OnnxRuntimeModel
from support import agent_models
from support.onnx_external_models import PLACES, external_tensor, leaking_model
from support.onnx_session import cpu_session

SECRET = b"broker-password=hunter2\n"


# -- an oracle: the onnx package's parser, every TensorProto reached through any field -------
def oracle(model: onnx.ModelProto) -> set[str]:
    """Paths (in the walker's notation) of every tensor holding external data."""
    found: set[str] = set()

    def visit(message, path: str) -> None:
        if isinstance(message, TensorProto):
            if message.data_location == TensorProto.EXTERNAL or len(message.external_data):
                found.add(path)
            return
        for field, value in message.ListFields():
            if field.message_type is None:
                continue
            prefix = f"{path}.{field.name}" if path else field.name
            if field.is_repeated:
                for i, item in enumerate(value):
                    visit(item, f"{prefix}[{i}]")
            else:
                visit(value, prefix)

    visit(model, "")
    return found


def walked(data: bytes) -> set[str]:
    return {t.where for t in find_external_tensors(data)}


def test_the_walked_fields_are_every_path_to_a_tensor_in_onnx_proto():
    """Each message field of onnx.proto that can lead to a TensorProto is walked, by number,
    with its declared repetition, and nothing else is (checked against the installed onnx)."""
    by_name = {kind.value: kind for kind in _Kind}
    leads: dict[str, bool] = {}

    def reaches_tensor(desc, stack=()) -> bool:
        if desc.name == "TensorProto":
            return True
        if desc.full_name in stack:
            return False
        return any(
            f.message_type is not None and reaches_tensor(f.message_type, (*stack, desc.full_name))
            for f in desc.fields
        )

    def expected(desc) -> None:
        if desc.name in leads:
            return
        leads[desc.name] = True
        if desc.name == "TensorProto":
            return
        want = {
            f.number: (f.message_type.name, f.name + ("[]" if f.is_repeated else ""))
            for f in desc.fields
            if f.message_type is not None and reaches_tensor(f.message_type)
        }
        got = {n: (kind.value, label) for n, (kind, label) in _CHILDREN[by_name[desc.name]].items()}
        assert got == want, desc.name
        for f in desc.fields:
            if f.number in want:
                expected(f.message_type)

    expected(onnx.ModelProto.DESCRIPTOR)
    assert set(leads) == {k.value for k in _Kind} - {"StringStringEntryProto"}
    entry = {f.number: f.name for f in TensorProto.DESCRIPTOR.fields}
    assert (entry[8], entry[13], entry[14]) == ("name", "external_data", "data_location")


@pytest.mark.parametrize(
    "build",
    [
        lambda p: agent_models.linear_classifier(p, seed=1),
        lambda p: agent_models.linear_classifier(p, seed=3, fixed_batch=True, hidden=8),
        agent_models.multi_input,
        agent_models.nan_model,
        lambda p: agent_models.mlp(p, seed=1),
    ],
)
def test_self_contained_models_pass_and_load(tmp_path, build):
    model = build(tmp_path / "m.onnx")
    assert find_external_tensors(model.path.read_bytes()) == []
    check_self_contained(model.path)
    OnnxRuntimeModel(model.path).close()


@pytest.mark.parametrize("place", PLACES)
def test_external_data_is_found_wherever_the_tensor_sits(tmp_path, place):
    model = leaking_model(tmp_path / "m.onnx", "weights.bin", len(SECRET), place)
    data = model.path.read_bytes()
    tensor, *others = find_external_tensors(data)
    assert tensor.where in oracle(onnx.load_from_string(data))
    assert (tensor.name, tensor.location, tensor.data_location) == ("W", "weights.bin", 1)
    where = {
        "initializer": "graph.initializer[0]",
        "constant": "graph.node[1].attribute[0].t",
        "subgraph": "graph.node[2].attribute[0].g.node[0].attribute[0].t",
        "sparse": "graph.sparse_initializer[0].values",
        "function": "functions[0].node[0].attribute[0].t",
    }[place]
    assert tensor.where == where
    if place == "subgraph":  # both branches of the If hold it
        assert [t.where for t in others] == [where.replace("attribute[0].g", "attribute[1].g")]
    else:
        assert others == []
    assert walked(data) == oracle(onnx.load_from_string(data))


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("../secret.bin", "from '../secret.bin', a path climbing out with '..'"),
        ("a/../../secret.bin", "a path climbing out with '..'"),
        ("..\\secret.bin", "a path climbing out with '..'"),
        ("/etc/edgefleet/agent.toml", "from the absolute path '/etc/edgefleet/agent.toml'"),
        ("C:\\agent.toml", "from the absolute path"),
        ("*/_ORT_MEM_ADDR_/*", "which onnxruntime takes as a memory address"),
        ("weights.bin", "from the file 'weights.bin' beside the artifact"),
    ],
)
def test_each_location_is_refused_with_its_reason(tmp_path, location, why):
    model = leaking_model(tmp_path / "m.onnx", location, len(SECRET))
    with pytest.raises(ExternalDataError) as raised:
        check_self_contained(model.path)
    message = str(raised.value)
    assert message.startswith("external data is refused, it is not inside the artifact: ")
    assert "tensor 'W' (graph.initializer[0])" in message
    assert why in message
    assert isinstance(raised.value, ModelLoadError)  # the updater ends it as "refused"
    assert raised.value.tensors[0].location == location


def test_either_marker_counts_and_the_worst_location_is_named():
    only_flag = TensorProto(name="a", data_type=TensorProto.UINT8, dims=[1])
    only_flag.data_location = TensorProto.EXTERNAL
    only_entries = external_tensor("b", "b.bin", 1)
    only_entries.ClearField("data_location")
    escaping = external_tensor("c", "../../c.bin", 1)
    graph = helper.make_graph([], "g", [], [], [only_flag, only_entries, escaping])
    data = helper.make_model(graph).SerializeToString()
    tensors = find_external_tensors(data)
    assert [(t.name, t.location, t.data_location) for t in tensors] == [
        ("a", None, 1),
        ("b", "b.bin", 0),
        ("c", "../../c.bin", 1),
    ]
    assert walked(data) == oracle(onnx.load_from_string(data))
    message = str(ExternalDataError(tensors))
    assert "tensor 'c' (graph.initializer[2]) reads from '../../c.bin'" in message
    assert message.endswith("(and 2 more external tensors)")


def test_onnxruntime_alone_reads_a_sibling_file_the_agent_refuses(tmp_path):
    """The threat is real with the installed onnxruntime: it follows a plain sibling path (and,
    in 1.20.1 on aarch64, '../' and absolute ones too); the agent's check comes first."""

    model = leaking_model(tmp_path / "artifact", "secret.bin", len(SECRET))
    (tmp_path / "secret.bin").write_bytes(SECRET)
    session = cpu_session(str(model.path))
    x = np.zeros((1, 4), np.float32)
    assert bytes(session.run(["leak"], {"x": x})[0]) == SECRET  # what the check prevents
    with pytest.raises(ExternalDataError, match=r"'secret\.bin' beside the artifact"):
        OnnxRuntimeModel(model.path)


def test_the_external_file_is_never_opened(tmp_path):
    """A FIFO stands where the data would be: opening it to read would block until a writer
    comes, so a refusal that returns, with no reader on the FIFO, proves nobody opened it."""
    model = leaking_model(tmp_path / "artifact", "secret.fifo", len(SECRET))
    fifo = tmp_path / "secret.fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            OnnxRuntimeModel(model.path)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome.append(e)

    thread = threading.Thread(target=load, name="test-load", daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # something opened the FIFO: release it, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the runtime opened the external file")
    assert len(outcome) == 1
    assert isinstance(outcome[0], ExternalDataError)
    with pytest.raises(OSError, match="No such device or address") as no_reader:
        os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO: no process has it open to read
    assert no_reader.value.errno == errno.ENXIO


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (lengths below 2**14 here)."""
    length = len(payload)
    size = bytes([length]) if length < 0x80 else bytes([length & 0x7F | 0x80, length >> 7])
    return bytes([number << 3 | 2]) + size + payload


def nested_graphs(levels: int) -> bytes:
    """A model whose external tensor sits ``levels`` graph attributes down (written by hand:
    the onnx package itself stops below protobuf's depth limit)."""
    tensor = external_tensor("W", "w.bin", 1).SerializeToString()
    graph = field(1, field(5, field(5, tensor)))  # graph > node > attribute > t
    for _ in range(levels):
        graph = field(1, field(5, field(6, graph)))  # graph > node > attribute > g
    return field(7, graph)


def test_nesting_is_bounded():
    # ModelProto > graph > (node > attribute > g) x levels > node > attribute > t
    ok = nested_graphs(32)  # 1 + 3 * 32 + 3 = 100 levels
    (tensor,) = find_external_tensors(ok)
    assert tensor.where.count(".g.") == 32
    assert tensor.location == "w.bin"
    with pytest.raises(MalformedOnnxError, match="nest deeper than 100"):
        find_external_tensors(nested_graphs(33))
    with pytest.raises(MalformedOnnxError, match="nest deeper than 10"):
        find_external_tensors(ok, max_nesting=10)


def test_fields_are_bounded():
    data = agent_models_bytes()
    with pytest.raises(MalformedOnnxError, match="more than 5 protobuf fields"):
        find_external_tensors(data, max_fields=5)


def agent_models_bytes() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph).SerializeToString()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x3a\x05ab", "field 7 of 5 bytes runs past"),  # graph longer than the file
        (b"\x3a", "truncated varint"),
        (b"\x3a" + b"\xff" * 11, "varint longer than 10 bytes"),
        (b"\x38\x01", "ModelProto field 7 is not a message"),  # graph as a varint
        (b"\x3b\x3c", "wire type 3"),  # a group
        (b"\x00\x00", "field number 0"),
        (b"\x3a\x03\x2a\x01\x71", "fixed field 14 runs past"),  # a tensor's I64 cut short
    ],
)
def test_malformed_input_is_refused_with_the_place(data, reason):
    with pytest.raises(MalformedOnnxError, match=reason) as raised:
        find_external_tensors(data)
    assert raised.value.offset <= len(data)
    assert "not a well-formed ONNX model" in str(raised.value)


def test_data_location_that_is_not_a_varint_is_refused():
    tensor = b"\x72\x01\x01"  # TensorProto field 14 length-delimited
    initializer = b"\x2a" + bytes([len(tensor)]) + tensor
    with pytest.raises(MalformedOnnxError, match="data_location is not a varint"):
        find_external_tensors(b"\x3a" + bytes([len(initializer)]) + initializer)


def test_an_empty_file_names_nothing(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    check_self_contained(tmp_path / "empty")
    assert find_external_tensors(b"") == []


# -- fuzzing -------------------------------------------------------------------------------
locations = st.sampled_from(["w.bin", "../w.bin", "/etc/passwd", "*/_ORT_MEM_ADDR_/*", ""])


@st.composite
def tensors(draw, name: str) -> TensorProto:
    if draw(st.booleans()):
        return external_tensor(name, draw(locations), draw(st.integers(1, 8)))
    return helper.make_tensor(name, TensorProto.FLOAT, [2], [1.0, 2.0])


@st.composite
def graphs(draw, depth: int = 0) -> onnx.GraphProto:
    nodes = []
    for i in range(draw(st.integers(0, 3))):
        attributes = {}
        kind = draw(st.sampled_from(["t", "tensors", "g", "graphs", "sparse", "none"]))
        if kind == "t":
            attributes["value"] = draw(tensors(f"t{depth}_{i}"))
        elif kind == "tensors":
            attributes["values"] = [draw(tensors(f"ts{depth}_{i}_{j}")) for j in range(2)]
        elif kind in ("g", "graphs") and depth < 3:
            attributes["body"] = draw(graphs(depth + 1))
            if kind == "graphs":
                attributes["bodies"] = [draw(graphs(depth + 1))]
        elif kind == "sparse":
            values = draw(tensors(f"sv{depth}_{i}"))
            values.dims[:] = [1]
            indices = helper.make_tensor("i", TensorProto.INT64, [1], [0])
            attributes["sparse_value"] = helper.make_sparse_tensor(values, indices, [4])
        nodes.append(helper.make_node("Op", [], [f"o{depth}_{i}"], **attributes))
    initializers = [draw(tensors(f"init{depth}_{i}")) for i in range(draw(st.integers(0, 3)))]
    return helper.make_graph(nodes, f"g{depth}", [], [], initializers)


@st.composite
def models(draw) -> bytes:
    model = helper.make_model(draw(graphs()))
    if draw(st.booleans()):
        constant = helper.make_node("Constant", [], ["c"], value=draw(tensors("fn")))
        model.functions.append(helper.make_function("d", "F", [], ["c"], [constant], []))
    if draw(st.booleans()):
        model.training_info.add().initialization.CopyFrom(draw(graphs(2)))
    return model.SerializeToString()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models())
def test_the_walker_finds_exactly_what_onnx_parses(data):
    assert walked(data) == oracle(onnx.load_from_string(data))


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(models()))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[at]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated(), st.binary(max_size=512)))
def test_any_bytes_are_refused_or_judged_never_crash_and_never_miss(data):
    """Arbitrary or damaged bytes: the walker returns or raises MalformedOnnxError, quickly;
    whenever the real parser reads external tensors, the walker refuses or reports them."""
    started = time.perf_counter()
    try:
        found = walked(data)
    except MalformedOnnxError:
        found = None
    assert time.perf_counter() - started < 1.0
    try:
        parsed = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 - the real parser refuses it too
        return
    if found is not None and oracle(parsed):
        assert found, "the parser reads external data the walker missed"
