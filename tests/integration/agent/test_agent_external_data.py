"""A signed ONNX model whose tensors read external files is refused by a real agent before any
runtime opens it: the files the paths name (a secret among them) are never read, never served
and never reported, and the model that was serving keeps serving.

The check is the agent's own, so it holds whatever the onnxruntime version (1.20.1 on
aarch64 follows '../' and absolute paths; the x86 one installed here follows plain siblings).
"""

from __future__ import annotations

import base64

import numpy as np
import pytest

from edgefleet.shared import EventType
from support.agent_harness import DEVICE, x_batch
from support.onnx_external_models import leaking_model

GOLDEN = [x_batch(1, seed=i) for i in range(2)]
SECRET = b"password = 'broker-secret-0451'\n"


@pytest.fixture
def serving(models, publisher, watcher, start_agent):
    """An agent serving model A at serial 5."""
    agent = start_agent()
    manifest = publisher.manifest(models.onnx_a, device_id=DEVICE, serial=5, golden_inputs=GOLDEN)
    publisher.publish_desired(DEVICE, publisher.sign(manifest))
    watcher.wait_event(EventType.SWAPPED)
    return agent


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("parent", "a path climbing out with '..'"),
        ("absolute", "from the absolute path"),
        ("sibling", "beside the artifact"),
    ],
)
def test_external_data_is_refused_before_load(
    serving, models, publisher, watcher, retained, tmp_path, kind, why
):
    data_dir = serving.settings.data_dir
    # A downloaded artifact is loaded (validated) from downloads/<sha256>: put the secret
    # exactly where each path resolves from there.
    target = {
        "parent": data_dir / "secret.bin",
        "absolute": tmp_path / "elsewhere" / "secret.bin",
        "sibling": serving.store.downloads_dir / "secret.bin",
    }[kind]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(SECRET)
    location = {"parent": "../secret.bin", "absolute": str(target), "sibling": "secret.bin"}[kind]
    model = leaking_model(tmp_path / "leak.onnx", location, len(SECRET))
    manifest = publisher.manifest(model, device_id=DEVICE, serial=6)  # signed like any other
    publisher.publish_desired(DEVICE, publisher.sign(manifest))

    event = watcher.wait_event(EventType.LOAD_FAILED, where=lambda e: e.serial == 6)
    assert event.reason.startswith(
        "external data is refused, it is not inside the artifact: tensor 'W' "
        "(graph.initializer[0]) reads "
    )
    assert why in event.reason
    assert repr(location) in event.reason
    state = retained(lambda s: s.last_outcome is not None and s.last_outcome.serial == 6)
    assert state.last_outcome.result == "refused"
    assert state.last_outcome.reason == event.reason
    assert state.active is not None
    assert state.active.serial == 5

    assert not [e for e in watcher.events() if e.type == EventType.SWAPPED and e.serial == 6]
    inputs = x_batch(2, seed=42)
    np.testing.assert_allclose(
        serving.infer(inputs)["logits"], models.onnx_a.reference(inputs)["logits"], rtol=1e-5
    )
    assert serving.current_model.info.serial == 5
    assert "leak" not in serving.current_model.runtime.output_names
    # nothing the device published carries the secret, raw or in base64
    for item in list(watcher.probe.received):
        assert SECRET not in item.payload
        assert base64.b64encode(SECRET)[:24] not in item.payload
    # the refused artifact is not kept; the secret is where it was, untouched
    assert not (serving.store.artifacts_dir / manifest.artifact.sha256).exists()
    assert not (serving.store.downloads_dir / manifest.artifact.sha256).exists()
    assert target.read_bytes() == SECRET
