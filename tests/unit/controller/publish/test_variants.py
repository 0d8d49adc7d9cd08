import pytest

from edgefleet.controller.publish.variants import can_run, select_artifact_for

ALL = {"onnx-fp32", "onnx-int8", "onnx-fp16", "tflite-fp32", "tflite-int8", "tflite-full-int8"}


@pytest.mark.parametrize(
    ("runtimes", "accelerators", "built", "expected"),
    [
        ({"onnxruntime"}, set(), ALL, "onnx-int8"),
        ({"litert"}, set(), ALL, "tflite-full-int8"),
        ({"tflite_runtime"}, set(), ALL, "tflite-full-int8"),
        ({"litert"}, {"edgetpu"}, ALL | {"edgetpu"}, "edgetpu"),
        ({"litert"}, {"edgetpu"}, ALL, "tflite-full-int8"),  # no edgetpu build: best CPU one
        ({"onnxruntime"}, {"edgetpu"}, ALL | {"edgetpu"}, "onnx-int8"),  # no delegate runtime
        ({"onnxruntime", "litert"}, set(), {"tflite-fp32", "onnx-fp32"}, "onnx-fp32"),
        ({"litert"}, set(), {"onnx-int8", "tflite-fp32"}, "tflite-fp32"),
    ],
)
def test_select_artifact_for(runtimes, accelerators, built, expected):
    assert select_artifact_for(runtimes, accelerators, built).target == expected


def test_no_runnable_artifact_is_a_skip_with_the_reason():
    choice = select_artifact_for({"litert"}, set(), {"onnx-int8", "onnx-fp32"})
    assert choice.skipped
    assert "onnx-fp32, onnx-int8" in choice.reason
    assert "litert" in choice.reason


def test_edge_tpu_artifacts_never_go_to_cpu_only_devices():
    assert not can_run("edgetpu", {"litert", "onnxruntime"}, set())
