"""Compaction on real quantized graphs (tests/support/pretrained.py): the PaddleOCR direction
classifier statically quantized per channel (QDQ and QOperator formats), and Silero VAD
dynamically quantized (its LSTM weights, which the quantizer stores once per If branch that
reads them, kept once). The compacted files compute exactly what the quantizer's files compute."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgefleet.controller.compress.compact import all_graphs, compact_file
from edgefleet.controller.compress.int8_coverage import artifact_bytes, int8_coverage
from edgefleet.controller.compress.opset import upgrade_opset
from edgefleet.controller.compress.quantize import quantize_onnx_dynamic, quantize_onnx_static
from support.onnx_session import cpu_session
from support.pretrained import pretrained_model
from support.pretrained_data import text_lines


def _session(path: Path, optimize: bool = True) -> ort.InferenceSession:
    # one thread: dynamic int8 kernels are exact only at a fixed split
    return cpu_session(path, optimize=optimize, threads=1)


def _compacted_copy(path: Path) -> Path:
    copy = path.with_name(f"{path.stem}-compacted.onnx")
    shutil.copy(path, copy)
    assert compact_file(copy) > 0
    return copy


def test_the_paddleocr_classifier_compacts_exactly_in_both_formats(tmp_path: Path) -> None:
    lines, _ = text_lines(24, seed=3)
    feeds = [{"x": lines[i : i + 8]} for i in range(0, 24, 8)]
    upgraded = upgrade_opset(pretrained_model("ppocr-cls"), tmp_path, 17, feeds[:1])
    built = quantize_onnx_static(upgraded.path, tmp_path, feeds, per_channel=True)
    assert set(built) == {"QDQ", "QOperator"}
    source = pretrained_model("ppocr-cls").stat().st_size
    ratios = {}
    for name, quantized in built.items():
        compacted = _compacted_copy(quantized)
        for optimize in (True, False):
            want = _session(quantized, optimize).run(None, {"x": lines})[0]
            np.testing.assert_array_equal(
                _session(compacted, optimize).run(None, {"x": lines})[0], want, err_msg=name
            )
        before, after = (artifact_bytes(onnx.load(str(p))) for p in (quantized, compacted))
        assert after["int8 weights"] >= int8_coverage(onnx.load(str(compacted))).int8_weights
        assert "float heavy weights" not in after
        # names, zero points, derived bias scales and defaults: the structure, not the numbers
        assert after["graph structure"] < before["graph structure"] / 3, name
        assert after["int8 weights"] <= before["int8 weights"]
        ratios[name] = source / compacted.stat().st_size
    assert ratios["QDQ"] > 3.2  # was 2.65 before compaction (bench/compress_real.py)
    # no activation QuantizeLinear/DequantizeLinear pairs, no bias scales: the 3.5x goal
    assert ratios["QOperator"] > 3.5


def _lstm_weight_tensors(model: onnx.ModelProto) -> list[tuple[str, onnx.TensorProto]]:
    """The stored LSTM weights (W and R) with the name of the graph holding each."""
    readers = {
        name
        for graph in all_graphs(model.graph)
        for node in graph.node
        if node.op_type == "DynamicQuantizeLSTM"
        for name in node.input[1:3]
    }
    return [
        (graph.name or "main", tensor)
        for graph in all_graphs(model.graph)
        for tensor in graph.initializer
        if tensor.name in readers
    ]


def _lstm_weights(model: onnx.ModelProto) -> Counter[str]:
    """Where the int8 LSTM weights live: graph name -> tensors."""
    return Counter(holder for holder, _ in _lstm_weight_tensors(model))


def _lstm_weight_types(model: onnx.ModelProto) -> set[int]:
    return {tensor.data_type for _, tensor in _lstm_weight_tensors(model)}


def test_silero_vad_keeps_each_lstm_weight_once_and_computes_the_same(tmp_path: Path) -> None:
    quantized = quantize_onnx_dynamic(
        pretrained_model("silero-vad"), tmp_path / "int8.onnx", tmp_path, per_channel=False
    )
    before = _lstm_weights(onnx.load(str(quantized)))
    compacted = _compacted_copy(quantized)
    after = _lstm_weights(onnx.load(str(compacted)))
    # two LSTMs per sample-rate branch read one cell's weights: 8 tensors stored, 4 needed
    assert sum(before.values()) == 8
    assert sum(after.values()) == 4
    # held by the main graph, as uint8: onnxruntime's exact-int8 rewrite of int8 weights would
    # not reach them there, and its uint8 kernels are exact on every CPU without it
    assert _lstm_weight_types(onnx.load(str(compacted))) == {onnx.TensorProto.UINT8}
    rng = np.random.default_rng(5)
    for sr, samples in ((16000, 576), (8000, 288)):  # each If branch
        state = np.zeros((2, 3, 128), np.float32)
        want_state = got_state = state
        for _ in range(3):  # consecutive calls, each model fed its own state
            audio = rng.normal(0, 0.1, (3, samples)).astype(np.float32)
            feed = {"input": audio, "sr": np.array(sr, np.int64)}
            want, want_state = _session(quantized).run(None, {**feed, "state": want_state})
            got, got_state = _session(compacted).run(None, {**feed, "state": got_state})
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(got_state, want_state)
    assert compacted.stat().st_size < quantized.stat().st_size - 4 * 65536
