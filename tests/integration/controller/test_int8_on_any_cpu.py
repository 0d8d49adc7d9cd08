"""Int8 models compute the same on a controller host whatever its CPU (rule 1: nothing the
controller measures may depend on the controller host).

On x86 without VNNI (AVX2 or AVX-512F alone), onnxruntime's u8s8 integer kernels saturate
their int16 pair sums, so the same artifact computes other numbers there than on a Pi or a VNNI
CPU: the controller's quality figures, its QDQ/QOperator choice and its golden pairs would then
depend on where it runs. These tests run the controller's and the agent's sessions under
``qemu-x86_64 -cpu Haswell`` (AVX2, no VNNI) and hold them to the ONNX reference evaluator; a
plain onnxruntime session there is the control that shows the model does saturate that CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnxruntime.quantization import QuantType, quantize_dynamic

from edgefleet.controller.compress.targets import batched_feeds, build_onnx_int8
from support import int8_probe
from support.int8_probe import PROBE_SHAPE, probe_images
from support.tools import require_tool

EMULATED_CPU = "Haswell"  # AVX2 and FMA, no AVX-512, no VNNI
STEPS = 2  # the exact kernels may round a requantization one step off the reference, per layer


def saturating_model(path: Path) -> Path:
    """Conv -> Relu -> Conv whose weights sit near their per-channel peak, all of one sign, so on
    non-negative inputs every u8s8 pair sum exceeds int16: the case saturating kernels get
    wrong, and a trained model meets in some channels only."""
    rng = np.random.default_rng(3)
    channels = PROBE_SHAPE[1]
    weights = [
        numpy_helper.from_array(
            rng.uniform(0.8, 1.0, (8, channels, 3, 3)).astype(np.float32), "w1"
        ),
        numpy_helper.from_array(rng.uniform(-0.2, 0.2, 8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.uniform(0.8, 1.0, (4, 8, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["scores"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "saturating",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", *PROBE_SHAPE[1:]])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 4, 8, 8])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _emulated(*args: str) -> None:
    qemu = require_tool("qemu-x86_64-static", "apt-get install qemu-user-static")
    done = subprocess.run(
        [qemu, "-cpu", EMULATED_CPU, sys.executable, int8_probe.__file__, *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _reference(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    """What the ONNX specification says the int8 model computes: exact integer arithmetic.
    The evaluator implements DequantizeLinear from opset 19, which reads int8 as 17 does."""
    model = onnx.load(str(path))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 19)
    return np.asarray(ReferenceEvaluator(model).run(None, feed)[0])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    work = tmp_path_factory.mktemp("int8-any-cpu")
    fp32 = saturating_model(work / "fp32.onnx")
    feeds = batched_feeds({"image": probe_images(64, seed=1)}, batch=16)
    built = build_onnx_int8(
        fp32, work, "static", per_channel=True, opset=17, calibration=feeds, check=feeds
    )
    kept = built.details["quant_format"]
    other = next(name for name in ("QDQ", "QOperator") if name != kept)
    candidates = {kept: built.path, other: work / f"{built.path.stem}-{other.lower()}-final.onnx"}
    assert candidates[other].is_file(), sorted(work.iterdir())
    return fp32, candidates


def _steps(got: np.ndarray, want: np.ndarray, model: Path) -> float:
    """|got - want| in steps of the model's output quantization."""
    graph = onnx.load(str(model)).graph
    stored = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    last = next(n for n in reversed(graph.node) if n.op_type == "DequantizeLinear")
    step = float(stored[last.input[1]])
    return float(np.abs(got - want).max()) / step


@pytest.mark.slow
def test_int8_sessions_compute_the_reference_on_a_cpu_without_vnni(
    built: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    _, candidates = built
    out, inputs = tmp_path / "emulated.npz", tmp_path / "inputs.npz"
    names = list(candidates)
    x = probe_images()
    np.savez(inputs, image=x)
    _emulated("run", str(out), str(inputs), *(str(candidates[n]) for n in names))
    with np.load(out) as emulated:
        for i, name in enumerate(names):
            want = _reference(candidates[name], {"image": x})
            # the controller's figures and golden pairs, and what an x86 device serves
            for side in ("controller", "agent"):
                off = _steps(emulated[f"{i}/{side}"], want, candidates[name])
                assert off <= STEPS, f"{name}, {side}: {off:.1f} steps from the reference"
            # the control: this model does make that CPU's default kernels saturate
            plain = _steps(emulated[f"{i}/plain"], want, candidates[name])
            assert plain > 10 * STEPS, f"{name}: a plain session is only {plain:.1f} steps off"


@pytest.mark.slow
def test_the_int8_target_chooses_and_reports_alike_on_a_cpu_without_vnni(
    built: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    fp32, _ = built
    native = build_onnx_int8(
        fp32,
        tmp_path,
        "static",
        per_channel=True,
        opset=17,
        calibration=batched_feeds({"image": probe_images(64, seed=1)}, batch=16),
        check=batched_feeds({"image": probe_images(64, seed=1)}, batch=16),
    ).details
    work = tmp_path / "emulated"
    work.mkdir()
    _emulated("build", str(fp32), str(work), str(tmp_path / "emulated.json"))
    emulated = json.loads((tmp_path / "emulated.json").read_text())["details"]
    assert emulated["quant_format"] == native["quant_format"]
    for name in ("QDQ", "QOperator"):
        here, there = native["quant_format_choice"][name], emulated["quant_format_choice"][name]
        assert "failure" not in here
        assert "failure" not in there
        # the figures judge the artifact, not the host: equal to rounding of the fp32 graph
        assert there["max_rel_error"] == pytest.approx(here["max_rel_error"], abs=0.01), name
        assert there["max_rel_error"] < 0.05, name


def branch_model(path: Path) -> Path:
    """An If whose branches' MatMuls read weights the main graph holds (as exporters write
    gated blocks): onnxruntime's dynamic quantizer leaves their int8 there, where its
    exact-int8 rewrite, which looks for a weight in its reader's own graph only, misses them;
    the controller's int8 target stores them in the branches as uint8."""
    rng = np.random.default_rng(4)
    weights = {
        name: numpy_helper.from_array(rng.uniform(0.8, 1.0, (32, 16)).astype(np.float32), name)
        for name in ("w_then", "w_else")
    }

    def branch(weight: str) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("MatMul", ["x", weight], [f"y_{weight}"])],
            f"branch_{weight}",
            [],
            [helper.make_tensor_value_info(f"y_{weight}", TensorProto.FLOAT, None)],
        )

    nodes = [
        helper.make_node("ReduceMax", ["switch"], ["flag"], keepdims=0),
        helper.make_node("Cast", ["flag"], ["cond"], to=TensorProto.BOOL),
        helper.make_node(
            "If", ["cond"], ["y"], then_branch=branch("w_then"), else_branch=branch("w_else")
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "branches",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32]),
            helper.make_tensor_value_info("switch", TensorProto.INT64, ["n", 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        initializer=list(weights.values()),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.slow
def test_dynamic_int8_in_subgraphs_is_exact_on_a_cpu_without_vnni(tmp_path: Path) -> None:
    fp32 = branch_model(tmp_path / "fp32.onnx")
    rng = np.random.default_rng(2)
    feeds = [
        {"x": rng.uniform(0.5, 1.0, (16, 32)).astype(np.float32), "switch": np.full((16, 1), s)}
        for s in (0, 1)
    ]
    built = build_onnx_int8(
        fp32, tmp_path, "dynamic", per_channel=False, opset=17, calibration=None, check=feeds
    )
    assert built.details["int8_heavy_ops"] == {"MatMul": 2}
    # The control: onnxruntime's quantizer alone leaves the weights in the main graph as int8.
    raw = tmp_path / "quantizer-only.onnx"
    quantize_dynamic(fp32, raw, weight_type=QuantType.QInt8, extra_options={"EnableSubgraph": True})
    for k, feed in enumerate(feeds):  # each branch
        inputs, out = tmp_path / f"inputs{k}.npz", tmp_path / f"emulated{k}.npz"
        np.savez(inputs, **feed)
        _emulated("run", str(out), str(inputs), str(built.path), str(raw))
        want = _reference(built.path, feed)
        peak = float(np.abs(want).max())
        with np.load(out) as emulated:
            for side in ("controller", "agent", "plain"):  # uint8 in branches: exact anywhere
                off = float(np.abs(emulated[f"0/{side}"] - want).max()) / peak
                assert off < 1e-5, f"branch {k}, {side}: {off:.2e} of the peak off"
            control = _reference(raw, feed)
            off = float(np.abs(emulated["1/controller"] - control).max()) / peak
            assert off > 1e-3, f"branch {k}: the quantizer's own file is only {off:.2e} off"
