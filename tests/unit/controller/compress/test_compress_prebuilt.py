"""edgefleet.controller.compress.prebuilt on small real models: each file checked to be what its
target says (format, weights, Edge TPU operator), loaded in onnxruntime or LiteRT, signatures
compared, evaluated like a compressed artifact, and nothing registered unless all of it passed.

The ``_edgetpu.tflite`` files here are stand-ins for an edgetpu_compiler output
(``support.edgetpu_standin``), built from a real full-integer TFLite the way a fully mapped
compile comes out: every operator replaced by one ``edgetpu-custom-op`` between the model's own
input and output tensors. There is no Edge TPU on this machine; nothing here runs one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnxruntime.quantization import QuantType, quantize_dynamic

from edgefleet.agent.runtimes import load_runtime
from edgefleet.agent.validation import validate
from edgefleet.controller.compress import (
    PrebuiltArtifact,
    import_and_register,
    import_artifacts,
    parse_artifact_spec,
)
from edgefleet.controller.compress.data import Dataset
from edgefleet.controller.compress.external_data import ExternalDataError, external_tensors
from edgefleet.controller.compress.prebuilt import NO_TWIN
from edgefleet.controller.config import Settings
from edgefleet.controller.errors import (
    ArtifactTargetMismatchError,
    CompressionError,
    DataMismatchError,
    SignatureMismatchError,
    UnknownTargetError,
    VersionExistsError,
)
from edgefleet.controller.registry.service import ModelRegistry
from edgefleet.shared.hashing import sha256_file
from support import agent_models
from support.agent_harness import manifest_for
from support.edgetpu_standin import edgetpu_compiler_standin
from support.onnx_external_models import leaking_model
from support.onnx_session import cpu_session


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prebuilt")
    fp32 = agent_models.linear_classifier(root / "fp32.onnx", seed=3, hidden=64).path
    int8 = root / "int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    twin = agent_models.tflite_int8_classifier(root / "model_full_int8.tflite").path
    return {
        "fp32": fp32,
        "int8": int8,
        "other": agent_models.multi_input(root / "multi.onnx").path,
        "wide": agent_models.nan_model(root / "wide.onnx").path,
        "add": agent_models.tflite_add(root / "add.tflite").path,
        "twin": twin,
        "edgetpu": edgetpu_compiler_standin(twin, root / "model_full_int8_edgetpu.tflite"),
        "edgetpu_other": edgetpu_compiler_standin(twin, root / "other_edgetpu.tflite", scale=0.5),
        "external": leaking_model(root / "external.onnx", "weights.bin", 64).path,
    }


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "controller", latency_runs=5, golden_pairs=4)


def _x(n: int = 16, width: int = 4) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset({"x": rng.standard_normal((n, width)).astype(np.float32)})


def _import(settings: Settings, tmp_path: Path, data: Dataset, **files: Path):
    given = [PrebuiltArtifact(t.replace("_", "-"), p) for t, p in files.items()]
    return import_artifacts(given, data, settings=settings)


# --- the command line's TARGET=PATH --------------------------------------------------------


def test_artifact_spec_parses_target_and_path() -> None:
    spec = parse_artifact_spec("tflite-int8=/models/m.tflite")
    assert spec == PrebuiltArtifact("tflite-int8", Path("/models/m.tflite"))


@pytest.mark.parametrize("spec", ["onnx-fp32", "=m.onnx", "onnx-fp32="])
def test_artifact_spec_needs_target_and_path(spec: str) -> None:
    with pytest.raises(CompressionError, match="TARGET=PATH"):
        parse_artifact_spec(spec)


def test_artifact_spec_refuses_an_unknown_target() -> None:
    with pytest.raises(UnknownTargetError, match="tflite-fp16"):
        parse_artifact_spec("tflite-fp16=m.tflite")


# --- ONNX ------------------------------------------------------------------------------------


def test_onnx_fp32_and_int8_are_evaluated_against_the_fp32_one(models, settings, tmp_path):
    # int8 first: the reference is still the fp32 artifact, wherever it comes in the list.
    result = _import(settings, tmp_path, _x(), onnx_int8=models["int8"], onnx_fp32=models["fp32"])
    assert result.reference == "onnx-fp32"
    assert result.source_size == models["fp32"].stat().st_size
    fp32, int8 = result.reports["onnx-fp32"], result.reports["onnx-int8"]
    assert fp32.quality.max_abs_error == 0.0
    assert fp32.quality.top1_agreement == 1.0
    assert int8.quality.top1_agreement is not None
    assert int8.quality.top1_agreement >= 0.75
    assert 0.0 < int8.quality.max_abs_error < 1.0
    assert int8.size_ratio == pytest.approx(models["fp32"].stat().st_size / int8.size_bytes)
    assert int8.details["compared_with"] == "onnx-fp32"
    assert int8.details["weights"]["int8"] > 0
    assert int8.latency.host
    assert int8.latency.p95_ms > 0
    assert int8.recipe == {"import": {"reference": "onnx-fp32", "cpu_twin": None, "task": "auto"}}
    by_target = {a.target: a for a in result.artifacts}
    assert by_target["onnx-int8"].golden.compare == "top1"  # as for a compressed onnx-int8
    assert by_target["onnx-fp32"].golden.compare == "allclose"
    assert len(by_target["onnx-fp32"].golden.pairs) == 4


def test_the_agent_accepts_the_golden_pairs_of_an_imported_artifact(models, settings, tmp_path):
    result = _import(settings, tmp_path, _x(), onnx_int8=models["int8"])
    (artifact,) = result.artifacts
    built = agent_models.BuiltModel(models["int8"], artifact.signature, "onnx-int8", None)
    manifest = manifest_for(built, artifact.golden)
    runtime = load_runtime(models["int8"], manifest)
    try:
        report = validate(runtime, manifest, warmup_runs=1, timed_runs=2)
    finally:
        runtime.close()
    assert report.pairs == 4
    assert report.top1_agreement >= artifact.golden.min_top1_agreement


def test_int8_target_refuses_a_float_model(models, settings, tmp_path):
    with pytest.raises(
        ArtifactTargetMismatchError, match=r"only 0% of its [\d,]+ weight values are 8-bit integers"
    ):
        _import(settings, tmp_path, _x(), onnx_int8=models["fp32"])


def test_fp32_target_refuses_a_quantized_model(models, settings, tmp_path):
    with pytest.raises(ArtifactTargetMismatchError, match="import it as an int8 target"):
        _import(settings, tmp_path, _x(), onnx_fp32=models["int8"])


def test_onnx_target_refuses_a_tflite_file_and_tflite_an_onnx_one(models, settings, tmp_path):
    with pytest.raises(ArtifactTargetMismatchError, match="a TFLite flatbuffer, not ONNX"):
        _import(settings, tmp_path, _x(), onnx_fp32=models["add"])
    with pytest.raises(ArtifactTargetMismatchError, match="not a TFLite flatbuffer"):
        _import(settings, tmp_path, _x(), tflite_fp32=models["fp32"])


def test_external_data_is_packed_into_one_self_contained_artifact(models, settings, tmp_path):
    source = tmp_path / "source" / "fp32.onnx"
    source.parent.mkdir()
    onnx.save(
        onnx.load(str(models["fp32"])), str(source), save_as_external_data=True,
        location="fp32.onnx.data", size_threshold=0,
    )  # fmt: skip
    assert list(external_tensors(onnx.load(str(source), load_external_data=False)))
    given = [PrebuiltArtifact("onnx-fp32", source)]
    result = import_artifacts(given, _x(), settings=settings, work_dir=tmp_path / "work")
    (artifact,) = result.artifacts
    assert artifact.file.parent.parent == tmp_path / "work"
    assert list(external_tensors(onnx.load(str(artifact.file), load_external_data=False))) == []
    packed = result.reports["onnx-fp32"].details["external_data_packed"]
    assert packed["files"] == ["fp32.onnx.data"]
    assert packed["tensors"] == len(onnx.load(str(models["fp32"])).graph.initializer)
    assert result.source_sha256 == sha256_file(artifact.file)  # what is registered: one file
    feed = _x().inputs
    want = cpu_session(str(models["fp32"]))
    got = cpu_session(str(artifact.file))
    np.testing.assert_array_equal(got.run(None, feed)[0], want.run(None, feed)[0])


def test_external_data_missing_or_outside_is_refused_naming_tensor_and_file(
    models, settings, tmp_path
):
    with pytest.raises(ExternalDataError, match=r"tensor 'W' .* 'weights\.bin': no such file"):
        _import(settings, tmp_path, _x(), onnx_fp32=models["external"])
    (tmp_path / "secret.bin").write_bytes(bytes(64))
    (tmp_path / "model").mkdir()
    escaping = leaking_model(tmp_path / "model" / "m.onnx", "../secret.bin", 64).path
    outside = r"'\.\./secret\.bin': outside the model's directory"
    with pytest.raises(ExternalDataError, match=outside):
        _import(settings, tmp_path, _x(), onnx_fp32=escaping)


def test_missing_file_and_unreadable_onnx_are_load_errors(models, settings, tmp_path):
    from edgefleet.controller.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="does not exist"):
        _import(settings, tmp_path, _x(), onnx_fp32=tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07" + b"\xff" * 40)
    with pytest.raises(ModelLoadError, match=r"junk\.onnx"):
        _import(settings, tmp_path, _x(), onnx_fp32=junk)


def test_signatures_must_agree_on_inputs(models, settings, tmp_path):
    with pytest.raises(SignatureMismatchError, match=r"onnx-int8 does not match onnx-fp32: inputs"):
        _import(
            settings,
            tmp_path,
            _x(),
            onnx_fp32=models["fp32"],
            onnx_int8=_int8(models["other"], tmp_path),
        )


def test_signatures_must_agree_on_output_shapes(models, settings, tmp_path):
    with pytest.raises(SignatureMismatchError, match=r"output 0 \('y' vs 'logits'\): shape"):
        _import(
            settings,
            tmp_path,
            _x(),
            onnx_fp32=models["fp32"],
            onnx_fp16=_fp16(models["wide"], tmp_path),
        )


def test_evaluation_data_must_fit(models, settings, tmp_path):
    with pytest.raises(DataMismatchError, match="expects"):
        _import(settings, tmp_path, _x(width=5), onnx_fp32=models["fp32"])


def test_one_artifact_per_target(models, settings, tmp_path):
    given = [PrebuiltArtifact("onnx-fp32", models["fp32"])] * 2
    with pytest.raises(CompressionError, match="given twice: onnx-fp32"):
        import_artifacts(given, _x(), settings=settings)


# --- TFLite and the Edge TPU -----------------------------------------------------------------


def test_tflite_without_a_serving_signature_is_named_as_the_agent_names_it(
    models, settings, tmp_path
):
    data = Dataset({k: np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
                    for k in ("a", "b")})  # fmt: skip
    result = _import(settings, tmp_path, data, tflite_fp32=models["add"])
    (artifact,) = result.artifacts
    assert artifact.file == models["add"]  # the file registered is the one given, unchanged
    assert {s.name for s in artifact.signature.inputs} == {"a", "b"}
    assert "none in the file" in artifact.report.details["signature"]
    pair = artifact.golden.pairs[0]
    total = np.frombuffer(pair.outputs["total"].raw(), np.float32)
    a, b = (np.frombuffer(pair.inputs[k].raw(), np.float32) for k in ("a", "b"))
    np.testing.assert_allclose(total, a + b, rtol=1e-6)


def test_edgetpu_is_evaluated_on_its_cpu_twin(models, settings, tmp_path):
    data = _x()
    result = _import(
        settings, tmp_path, data, tflite_full_int8=models["twin"], edgetpu=models["edgetpu"]
    )
    assert result.cpu_twin == "tflite-full-int8"
    assert result.reference == "tflite-full-int8"
    by_target = {a.target: a for a in result.artifacts}
    tpu, twin = by_target["edgetpu"], by_target["tflite-full-int8"]
    assert tpu.file == models["edgetpu"]
    assert tpu.report.runtime == "edgetpu"
    assert tpu.report.details["edgetpu_custom_ops"] == 1
    assert "its CPU twin tflite-full-int8" in tpu.report.details["evaluated_on"]
    assert tpu.report.size_bytes == models["edgetpu"].stat().st_size
    assert tpu.signature == twin.signature
    assert [s.dtype for s in tpu.signature.inputs] == ["int8"]  # native, as the device feeds it
    assert tpu.golden.pairs == twin.golden.pairs  # the twin's arithmetic stands for the TPU's
    assert tpu.golden.compare == "top1"
    assert tpu.report.quality.top1_agreement == 1.0


def test_edgetpu_without_its_custom_op_is_refused(models, settings, tmp_path):
    with pytest.raises(ArtifactTargetMismatchError, match="no edgetpu-custom-op operator"):
        _import(settings, tmp_path, _x(), tflite_full_int8=models["twin"], edgetpu=models["twin"])


@pytest.mark.parametrize("target", ["tflite_full_int8", "tflite_int8", "tflite_fp32"])
def test_a_cpu_target_refuses_an_edgetpu_file(models, settings, tmp_path, target):
    with pytest.raises(ArtifactTargetMismatchError, match="compiled for the Edge TPU"):
        _import(settings, tmp_path, _x(), **{target: models["edgetpu"]})


def test_edgetpu_without_a_cpu_twin_is_registered_without_golden_pairs(models, settings, tmp_path):
    registry = ModelRegistry.from_settings(settings)
    given = [
        PrebuiltArtifact("onnx-fp32", models["fp32"]),
        PrebuiltArtifact("edgetpu", models["edgetpu"]),
    ]
    record = import_and_register(registry, "tpu", "1", given, _x(), settings=settings)
    assert record.recipe["import"] == {"reference": "onnx-fp32", "cpu_twin": None, "task": "auto"}
    tpu, fp32 = record.artifact("edgetpu"), record.artifact("onnx-fp32")
    assert tpu is not None
    assert fp32 is not None
    assert tpu.golden is None
    assert (tpu.report.quality, tpu.report.latency) == (None, None)
    assert tpu.report.unmeasured == NO_TWIN
    assert "--artifact tflite-full-int8=PATH" in NO_TWIN
    assert "dtypes, shapes and finiteness only" in NO_TWIN
    assert "evaluated_on" not in tpu.report.details
    assert tpu.report.details["edgetpu_custom_ops"] == 1
    assert tpu.report.runtime == "edgetpu"
    assert tpu.path.read_bytes() == models["edgetpu"].read_bytes()
    # native, what the Edge TPU model takes and gives: the device checks these dtypes
    assert [(s.dtype, s.shape) for s in tpu.signature.inputs] == [("int8", (1, 4))]
    assert [(s.dtype, s.shape) for s in tpu.signature.outputs] == [("int8", (1, 3))]
    assert fp32.golden is not None  # the others are evaluated as usual
    assert fp32.report.unmeasured is None
    assert fp32.report.quality is not None


def test_a_lone_edgetpu_artifact_is_its_own_reference_and_still_checks_the_data(
    models, settings, tmp_path
):
    result = _import(settings, tmp_path, _x(), edgetpu=models["edgetpu"])
    assert (result.reference, result.cpu_twin) == ("edgetpu", None)
    (artifact,) = result.artifacts
    assert artifact.golden is None
    assert artifact.report.unmeasured == NO_TWIN
    assert artifact.report.size_ratio == 1.0
    assert result.source_size == models["edgetpu"].stat().st_size
    with pytest.raises(DataMismatchError, match="expects"):
        _import(settings, tmp_path, _x(width=5), edgetpu=models["edgetpu"])


def test_edgetpu_without_a_twin_is_still_checked_against_the_reference(models, settings, tmp_path):
    with pytest.raises(SignatureMismatchError, match="edgetpu does not match onnx-fp32: inputs"):
        _import(settings, tmp_path, _x(), onnx_fp32=models["other"], edgetpu=models["edgetpu"])


def test_edgetpu_and_twin_must_have_the_same_boundary(models, settings, tmp_path):
    with pytest.raises(SignatureMismatchError, match=r"tensor 'logits' is int8 \[1, 3\] \(scale"):
        _import(
            settings, tmp_path, _x(),
            tflite_full_int8=models["twin"], edgetpu=models["edgetpu_other"],
        )  # fmt: skip


def test_full_int8_target_refuses_float_io_and_int8_refuses_integer_io(models, settings, tmp_path):
    float_io = _tflite_dynamic_range(tmp_path)
    with pytest.raises(ArtifactTargetMismatchError, match="float tensors at its boundary"):
        _import(settings, tmp_path, _x(), tflite_full_int8=float_io)
    with pytest.raises(ArtifactTargetMismatchError, match="import it as tflite-full-int8"):
        _import(settings, tmp_path, _x(), tflite_int8=models["twin"])


# --- registering -----------------------------------------------------------------------------


def test_nothing_is_registered_unless_every_artifact_passed(models, settings, tmp_path):
    registry = ModelRegistry.from_settings(settings)
    given = [
        PrebuiltArtifact("onnx-fp32", models["fp32"]),
        PrebuiltArtifact("onnx-int8", models["fp32"]),  # a float model labelled int8
    ]
    with pytest.raises(ArtifactTargetMismatchError):
        import_and_register(registry, "m", "1", given, _x(), settings=settings)
    assert not registry.has_version("m", "1")
    assert not any(settings.artifact_dir.glob("??/*"))
    record = import_and_register(registry, "m", "1", given[:1], _x(), settings=settings)
    (stored,) = record.artifacts
    assert stored.report.recipe["import"]["reference"] == "onnx-fp32"
    assert record.summary["imported"][0]["file"] == "fp32.onnx"
    assert stored.path.read_bytes() == models["fp32"].read_bytes()
    with pytest.raises(VersionExistsError):
        import_and_register(registry, "m", "1", given[:1], _x(), settings=settings)


# --- helpers -------------------------------------------------------------------------------


def _int8(source: Path, tmp_path: Path) -> Path:
    dst = tmp_path / f"{source.stem}-int8.onnx"
    model = onnx.load(str(source))
    # multi_input has no weights to quantize: give it an int8 matrix so the target's check holds
    weights = onnx.numpy_helper.from_array(np.ones((64, 64), np.int8), "int8_weights")
    model.graph.initializer.append(weights)
    onnx.save(model, str(dst))
    return dst


def _fp16(source: Path, tmp_path: Path) -> Path:
    dst = tmp_path / f"{source.stem}-fp16.onnx"
    model = onnx.load(str(source))
    weights = onnx.numpy_helper.from_array(np.ones((64, 64), np.float16), "fp16_weights")
    model.graph.initializer.append(weights)
    onnx.save(model, str(dst))
    return dst


def _tflite_dynamic_range(tmp_path: Path) -> Path:
    """float x [1,4] -> FULLY_CONNECTED with int8 weights (hybrid) -> float logits [1,3]."""
    from ai_edge_litert import schema_py_generated as s

    buf = s.BufferT()
    buf.data = list(np.ones((3, 4), np.int8).tobytes())
    f32, i8 = s.TensorType.FLOAT32, s.TensorType.INT8
    tensors = [
        agent_models.tflite_tensor("x", (1, 4), f32),
        agent_models.tflite_tensor("w", (3, 4), i8, buffer=1, quant=(0.02, 0)),
        agent_models.tflite_tensor("logits", (1, 3), f32),
    ]
    op = s.OperatorT()
    op.opcodeIndex = 0
    op.inputs, op.outputs = [0, 1, -1], [2]
    op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = s.FullyConnectedOptionsT()
    code = agent_models.tflite_opcode(s.BuiltinOperator.FULLY_CONNECTED, 4)
    path = tmp_path / "hybrid.tflite"
    path.write_bytes(agent_models.tflite_bytes(tensors, [buf], [op], [code], [0], [2]))
    return path
