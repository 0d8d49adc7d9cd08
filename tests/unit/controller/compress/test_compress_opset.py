"""Opset upgrade before int8: opset 7, 11 and 13 versions of one model quantize per channel to the
same result, the upgrade is checked against the original, and where it is not kept (a converter
that changes what the model computes) static int8 falls back to per-tensor scales and says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, version_converter

from edgefleet.controller.compress.int8_coverage import int8_coverage
from edgefleet.controller.compress.opset import ATOL, RTOL, ai_onnx_opset, upgrade_opset
from edgefleet.controller.compress.quantize import Feed
from edgefleet.controller.compress.targets import batched_feeds, build_onnx_int8
from edgefleet.controller.errors import OpsetUpgradeError
from support.onnx_session import cpu_session

RNG = np.random.default_rng(0)
IMAGES = RNG.random((48, 3, 8, 8), dtype=np.float32)


def _initializers(*arrays: tuple[str, np.ndarray]) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(a.astype(np.float32), name) for name, a in arrays]


def conv_gemm_opset7(path: Path) -> Path:
    """Conv -> Relu -> Flatten -> Gemm as a 2018 exporter wrote it: opset 7, IR version 3
    (initializers listed as graph inputs), dynamic batch."""
    rng = np.random.default_rng(1)
    inits = _initializers(
        ("conv_w", rng.normal(0, 0.3, (8, 3, 3, 3))),
        ("conv_b", rng.normal(0, 0.1, 8)),
        ("fc_w", rng.normal(0, 0.1, (10, 8 * 6 * 6))),
        ("fc_b", rng.normal(0, 0.1, 10)),
    )
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    weight_inputs = [
        helper.make_tensor_value_info(i.name, TensorProto.FLOAT, i.dims) for i in inits
    ]
    graph = helper.make_graph(
        nodes,
        "conv_gemm",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8]), *weight_inputs],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def conv_resize_opset10(path: Path) -> Path:
    """Conv -> Resize(linear, x2) -> Conv at opset 10, the way bilinear upsampling was exported
    before opset 11. onnx's 10->11 Resize adapter drops the opset-10 'asymmetric' coordinate
    mapping (11 defaults to 'half_pixel'), so the upgraded graph computes something else."""
    rng = np.random.default_rng(2)
    inits = [
        *_initializers(
            ("w1", rng.normal(0, 0.3, (8, 3, 3, 3))),
            ("w2", rng.normal(0, 0.3, (4, 8, 3, 3))),
        ),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["c1", "scales"], ["up"], name="upsample", mode="linear"),
        helper.make_node("Conv", ["up", "w2"], ["out"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_resize",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 16, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    model.ir_version = 5
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = cpu_session(str(path))
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _feeds(x: np.ndarray) -> list[Feed]:
    return batched_feeds({"image": x}, batch=16)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The same model at opsets 7, 11 and 13 (11 and 13 by onnx's converter from 7)."""
    root = tmp_path_factory.mktemp("versions")
    paths = {7: conv_gemm_opset7(root / "opset7.onnx")}
    base = onnx.load(str(paths[7]))
    for opset in (11, 13):
        paths[opset] = root / f"opset{opset}.onnx"
        onnx.save(version_converter.convert_version(base, opset), str(paths[opset]))
    return paths


def test_versions_compute_the_same_function(versions: dict[int, Path]) -> None:
    assert {v: ai_onnx_opset(onnx.load(str(p))) for v, p in versions.items()} == {
        7: 7, 11: 11, 13: 13
    }  # fmt: skip
    want = _run(versions[7], IMAGES)
    for path in versions.values():
        np.testing.assert_allclose(_run(path, IMAGES), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("opset", [7, 11, 13])
def test_upgrade_keeps_outputs(versions: dict[int, Path], tmp_path: Path, opset: int) -> None:
    upgrade = upgrade_opset(versions[opset], tmp_path, 17, _feeds(IMAGES[:32]))
    assert upgrade.failure is None
    if opset == 13:  # already per-channel capable: left alone
        assert not upgrade.upgraded
        assert upgrade.path == versions[13]
        return
    assert (upgrade.from_opset, upgrade.to_opset) == (opset, 17)
    assert ai_onnx_opset(onnx.load(str(upgrade.path))) == 17
    assert upgrade.checked_calls == 2
    assert upgrade.max_abs_diff is not None
    assert upgrade.max_abs_diff <= ATOL
    details = upgrade.details()["opset_upgrade"]
    assert (details["from"], details["to"]) == (opset, 17)
    assert details["tolerance"] == {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(
        _run(upgrade.path, IMAGES), _run(versions[opset], IMAGES), rtol=RTOL, atol=ATOL
    )


def test_every_version_quantizes_per_channel_to_the_same_model(
    versions: dict[int, Path], tmp_path: Path
) -> None:
    calibration, check = _feeds(IMAGES[:32]), _feeds(IMAGES[32:])
    outputs = {}
    for opset, path in versions.items():
        work = tmp_path / str(opset)
        work.mkdir()
        built = build_onnx_int8(
            path, work, "static", per_channel=True, opset=17, calibration=calibration, check=check
        )
        assert built.details["per_channel"] is True
        assert "per_channel_fallback" not in built.details
        assert built.details["source_opset"] == opset
        assert built.details["opset"] == (13 if opset == 13 else 17)
        quantized = onnx.load(str(built.path))
        assert ai_onnx_opset(quantized) >= 13
        # the smaller format at no loss: integer kernels, no QuantizeLinear/DequantizeLinear
        # pairs between them (only the input quantized and the logits dequantized)
        assert built.details["quant_format"] == "QOperator"
        ops = [n.op_type for n in quantized.graph.node]
        assert ops == ["QuantizeLinear", "QLinearConv", "Flatten", "QGemm", "DequantizeLinear"]
        # per-channel weight scales: the kernels' scale input is a vector, one per output
        # channel of the conv (8) and per output column of the dense layer (10)
        stored = {t.name: t for t in quantized.graph.initializer}
        scales = {
            n.op_type: list(stored[n.input[4]].dims)
            for n in quantized.graph.node
            if n.op_type in ("QLinearConv", "QGemm")
        }
        assert scales == {"QLinearConv": [8], "QGemm": [10]}
        coverage = int8_coverage(quantized)
        assert coverage.quantized_ops == {"Conv": 1, "Gemm": 1}
        assert coverage.weight_share == 1.0
        outputs[opset] = _run(built.path, IMAGES)
    reference = _run(versions[7], IMAGES)
    for opset, produced in outputs.items():
        # the same weights and calibration give the same int8 model whatever opset it came in
        np.testing.assert_allclose(produced, outputs[13], rtol=0, atol=1e-6, err_msg=str(opset))
        assert np.abs(produced - reference).max() <= 0.05 * np.abs(reference).max()


def test_upgrade_that_changes_outputs_falls_back_to_per_tensor(tmp_path: Path) -> None:
    source = conv_resize_opset10(tmp_path / "resize10.onnx")
    calibration, check = _feeds(IMAGES[:32]), _feeds(IMAGES[32:])
    upgrade = upgrade_opset(source, tmp_path, 17, check)
    assert not upgrade.upgraded
    assert upgrade.path == source
    assert upgrade.failure is not None
    assert "outputs differ after the upgrade" in upgrade.failure
    assert "'upsample' (Resize)" in upgrade.failure  # the node that changed, found by probing
    assert "to opset 17" in upgrade.failure
    assert "to opset 13" in upgrade.failure

    built = build_onnx_int8(
        source, tmp_path, "static", per_channel=True, opset=17, calibration=calibration,
        check=check,
    )  # fmt: skip
    details = built.details
    assert details["per_channel"] is False
    assert "per-tensor" in details["per_channel_fallback"]
    assert "outputs differ after the upgrade" in details["per_channel_fallback"]
    assert details["opset_upgrade_failed"] == upgrade.failure
    assert (details["source_opset"], details["opset"]) == (10, 10)
    quantized = onnx.load(str(built.path))
    assert ai_onnx_opset(quantized) == 10  # quantized as it came, per tensor
    assert not [n for n in quantized.graph.node if n.op_type == "DequantizeLinear" and n.attribute]
    assert int8_coverage(quantized).quantized_ops == {"Conv": 2}
    reference = _run(source, IMAGES)
    assert np.abs(_run(built.path, IMAGES) - reference).max() <= 0.05 * np.abs(reference).max()


def test_opset9_model_whose_upgrade_changes_outputs_is_refused(tmp_path: Path) -> None:
    """Below opset 10 onnxruntime's quantizer would run the same lossy converter itself,
    unchecked: no per-tensor fallback exists, so the target fails naming the node."""
    rng = np.random.default_rng(3)
    inits = [
        *_initializers(("w", rng.normal(0, 0.3, (4, 3, 3, 3)))),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Upsample", ["c", "scales"], ["out"], name="up", mode="linear"),
        ],
        "upsample9",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 16, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 4
    path = tmp_path / "upsample9.onnx"
    onnx.save(model, str(path))
    with pytest.raises(OpsetUpgradeError) as caught:
        build_onnx_int8(
            path, tmp_path, "static", per_channel=True, opset=17,
            calibration=_feeds(IMAGES[:16]), check=_feeds(IMAGES[16:32]),
        )  # fmt: skip
    assert caught.value.from_opset == 9
    assert "outputs differ after the upgrade" in str(caught.value)
    assert "'up' (Upsample)" in str(caught.value)


def test_converter_refusing_the_higher_opset_retries_13(tmp_path: Path) -> None:
    """A BatchNormalization with its training outputs (old exporters wrote them) cannot go past
    opset 13; per-channel needs only 13, so that is what is kept."""
    rng = np.random.default_rng(4)
    inits = _initializers(
        ("w", rng.normal(0, 0.3, (4, 3, 3, 3))),
        *((n, rng.random(4) + 0.5) for n in ("scale", "bias", "mean", "var")),
    )
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["c"], name="conv"),
            helper.make_node(
                "BatchNormalization",
                ["c", "scale", "bias", "mean", "var"],
                ["out", "run_mean", "run_var", "saved_mean", "saved_var"],
                name="bn",
            ),
        ],
        "bn_training_outputs",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 6, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    path = tmp_path / "bn11.onnx"
    onnx.save(model, str(path))
    upgrade = upgrade_opset(path, tmp_path, 17, _feeds(IMAGES[:16]))
    assert (upgrade.from_opset, upgrade.to_opset, upgrade.failure) == (11, 13, None)
    assert len(upgrade.refused) == 1
    assert "to opset 17" in upgrade.refused[0]
    assert "BatchNormalization outputs 4 and 5" in upgrade.refused[0]
    assert upgrade.details()["opset_upgrade"]["refused"] == list(upgrade.refused)
