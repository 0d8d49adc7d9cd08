"""Prebuilt models end to end: ``edgefleet model import`` (a child process, as an operator runs it)
registers a real pretrained model into a running controller's registry, a rollout sends it to a
real agent process over a real mosquitto, and the agent serves an inference whose answer is the
one the same file gives in its runtime here. An ``edgetpu`` file imported without its CPU twin
goes as far as this machine allows (no Edge TPU): see the last test for what is real in it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgefleet.controller.compress.prebuilt import NO_TWIN
from edgefleet.shared import DeviceStatus, Hello
from support import agent_models
from support.edgetpu_standin import edgetpu_compiler_standin
from support.mqtt import MqttProbe, wait_until
from support.onnx_session import cpu_session
from support.pretrained import pretrained_model
from support.samples import device_hello, device_state

pytestmark = pytest.mark.slow


def _import(fleet, ref: str, artifact: str, eval_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env["EDGEFLEET_LATENCY_RUNS"] = "5"
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.controller.cli", "model", "import", ref,
         "--artifact", artifact, "--eval", str(eval_path),
         "--data-dir", str(fleet.controller_dir), "--json"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _infer(fleet, device_id: str, inputs: dict[str, np.ndarray]) -> httpx.Response:
    body = io.BytesIO()
    np.savez(body, **inputs)  # type: ignore[arg-type]
    return httpx.post(
        f"http://{fleet.http[device_id]}/v1/infer",
        content=body.getvalue(),
        headers={"Content-Type": "application/x-npz"},
        timeout=30,
    )


def _rolled_out(fleet, model: str, device_id: str, runtime: str) -> dict:
    fleet.start_agent(device_id, runtimes=[runtime])
    fleet.wait_devices([device_id])
    rollout = fleet.rollout(
        "1", model=model, expect={"completed", "paused", "rolled_back"}, waves="100%",
        policy={"soak_s": 0},
    )  # fmt: skip
    assert rollout["status"] == "completed", (rollout["reason"], rollout["devices"])
    (device,) = rollout["devices"]
    assert device["state"] == "active"
    return device


def test_imported_onnx_classifier_is_rolled_out_and_serves(fleet, tmp_path):

    model = pretrained_model("ppocr-cls")
    images = np.random.default_rng(5).uniform(-1, 1, (9, 3, 48, 192)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=images[:8])
    record = _import(fleet, "ppocr-cls:1", f"onnx-fp32={model}", tmp_path / "eval.npz")
    assert [a["target"] for a in record["artifacts"]] == ["onnx-fp32"]

    device = _rolled_out(fleet, "ppocr-cls", "onnx-cls", "onnxruntime")
    assert device["target"] == "onnx-fp32"
    one = {"x": images[8:]}  # not one of the golden inputs
    response = _infer(fleet, "onnx-cls", one)
    assert response.status_code == 200, response.text
    assert (response.headers["X-Model-Id"], response.headers["X-Model-Version"]) == (
        "ppocr-cls",
        "1",
    )
    with np.load(io.BytesIO(response.content)) as served:
        (name,) = served.files
        got = served[name]
    session = cpu_session(str(model))
    (want,) = session.run(None, one)
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_imported_tflite_detector_is_rolled_out_to_a_litert_device_and_serves(fleet, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model = pretrained_model("blazeface-short")
    faces = np.random.default_rng(6).uniform(-1, 1, (9, 128, 128, 3)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", input=faces[:8])
    _import(fleet, "blazeface:1", f"tflite-fp32={model}", tmp_path / "eval.npz")

    device = _rolled_out(fleet, "blazeface", "litert-face", "litert")
    assert device["target"] == "tflite-fp32"
    response = _infer(fleet, "litert-face", {"input": faces[8:]})
    assert response.status_code == 200, response.text
    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], faces[8:])
    interpreter.invoke()
    with np.load(io.BytesIO(response.content)) as served:
        assert set(served.files) == {"regressors", "classificators"}
        for detail in interpreter.get_output_details():
            want = interpreter.get_tensor(detail["index"])
            np.testing.assert_allclose(served[detail["name"]], want, rtol=1e-4, atol=1e-4)


def _coral_hello(device_id: str) -> Hello:
    """What an agent on a Coral says: LiteRT, and the Edge TPU its delegate library found."""
    return device_hello(device_id, runtimes=("litert",)).model_copy(
        update={"accelerators": ("edgetpu",)}
    )


def test_imported_edgetpu_without_its_twin_is_rolled_out_without_golden_pairs(fleet, tmp_path):
    """Real: the import (the CLI, a child process), the controller process, its rollout engine,
    variant choice and manifest signer, mosquitto, the artifact download over HTTP, and the
    agent's own intake (signature, serial, expiry) and validation code. Stand-ins: the two
    Coral devices are MQTT clients saying what an agent with an Edge TPU says (no Edge TPU
    here: a real agent neither advertises one nor loads an edgetpu artifact, as checked below);
    the edgetpu file is ``support.edgetpu_standin``'s stand-in for an edgetpu_compiler
    output; and what runs under the agent's validation is its LiteRT runtime on the CPU twin
    the stand-in was made from (the delegate would run the compiled file with the same
    boundary tensors), against the manifest as signed for the edgetpu artifact."""
    from edgefleet.agent.errors import UnsupportedArtifactError
    from edgefleet.agent.intake import Accepted, read_desired
    from edgefleet.agent.keeper import check_runnable
    from edgefleet.agent.runtimes import load_runtime
    from edgefleet.agent.settings import AgentSettings
    from edgefleet.agent.validation import validate
    from edgefleet.shared import SignedManifest, decode_versioned, encode
    from edgefleet.shared.ed25519 import PublicKey

    twin = agent_models.tflite_int8_classifier(tmp_path / "model_full_int8.tflite").path
    tpu = edgetpu_compiler_standin(twin, tmp_path / "model_full_int8_edgetpu.tflite")
    np.savez(tmp_path / "eval.npz",
             x=np.random.default_rng(7).standard_normal((8, 4)).astype(np.float32))  # fmt: skip
    record = _import(fleet, "coral:1", f"edgetpu={tpu}", tmp_path / "eval.npz")
    (artifact,) = record["artifacts"]
    assert (artifact["golden"], artifact["report"]["latency"]) == (None, None)
    assert artifact["report"]["unmeasured"] == NO_TWIN

    wire = {"coral-v1": 1, "coral-v2": 2}
    with MqttProbe(fleet.broker.host, fleet.broker.port) as probe:
        for device_id, version in wire.items():
            probe.subscribe(fleet.topics.desired(device_id))
            probe.publish(fleet.topics.hello(device_id), encode(_coral_hello(device_id),
                          version=version))  # fmt: skip
            empty = device_state(device_id, status=DeviceStatus.IDLE)
            probe.publish(fleet.topics.state(device_id), encode(empty, version=version),
                          retain=True)  # fmt: skip
        fleet.wait_devices(list(wire))
        body = {"model": "coral", "version": "1", "waves": "100%", "policy": {"soak_s": 0}}
        response = fleet.controller.api("POST", "/api/rollouts", json=body)
        assert response.status_code == 201, response.text

        def manifests() -> dict[str, bytes]:
            got = {m.topic: m.payload for m in list(probe.received) if m.payload}
            return {d: got[fleet.topics.desired(d)] for d in wire if fleet.topics.desired(d) in got}

        wait_until(lambda: len(manifests()) == len(wire), timeout=60, interval=0.2)
        desired = manifests()

    key_path = fleet.controller_dir / "keys" / "signing.pub"
    key = PublicKey.from_pem(key_path.read_bytes())
    settings = AgentSettings(device_id="coral-v2", controller_key=key_path,
                             broker_url=fleet.broker.url, data_dir=tmp_path / "agent",
                             runtimes=["litert"])  # fmt: skip
    for device_id, version in wire.items():
        payload = desired[device_id]
        assert decode_versioned(payload, SignedManifest)[0] == version  # in the device's wire
        accepted = read_desired(payload, key, device_id=device_id, last_serial=0, last_digest=None)
        assert isinstance(accepted, Accepted), accepted
        manifest = accepted.verified.manifest
        assert manifest.schema_version == version
        assert (manifest.target, manifest.runtime) == ("edgetpu", "edgetpu")
        assert manifest.golden is None  # schema 1: no pairs inline
        assert manifest.golden_ref is None  # schema 2: no golden file to fetch
        if version == 2:
            assert manifest.latency is not None
            assert manifest.latency.reference_p95_ms is None  # nothing measured on the controller
        assert [(s.dtype, s.shape) for s in manifest.signature.outputs] == [("int8", (1, 3))]
        served = httpx.get(manifest.artifact.http_url, timeout=30)
        assert served.status_code == 200, served.text
        assert served.content == tpu.read_bytes()  # the Edge TPU file itself, as registered

        # This machine has no Edge TPU: the real agent refuses before downloading ...
        with pytest.raises(UnsupportedArtifactError, match=r"libedgetpu\.so\.1"):
            check_runnable(manifest, settings)
        # ... so its validation runs on the stand-in: LiteRT on the CPU twin, same tensors.
        cpu = manifest.model_copy(update={"target": "tflite-full-int8", "runtime": "litert"})
        runtime = load_runtime(twin, cpu)
        try:
            report = validate(runtime, manifest, golden=None, warmup_runs=1, timed_runs=3)
        finally:
            runtime.close()
        assert report.pairs == 0  # output dtype, shape and finiteness checked, and passed
        assert report.figures()["golden_pairs"] == 0.0
