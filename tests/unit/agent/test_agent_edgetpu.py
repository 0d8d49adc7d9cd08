"""edgefleet.agent.runtimes.edgetpu: use the delegate on a Coral, refuse clearly elsewhere."""

from __future__ import annotations

import pytest

from edgefleet.agent.errors import UnsupportedArtifactError
from edgefleet.agent.runtimes import load_runtime
from edgefleet.agent.runtimes.edgetpu import edgetpu_library_present, load_edgetpu_delegate
from support.agent_harness import manifest_for

HAS_TPU = edgetpu_library_present()


@pytest.mark.skipif(HAS_TPU, reason="this machine has an Edge TPU runtime")
def test_refuses_without_the_delegate(unit_models):
    with pytest.raises(UnsupportedArtifactError) as info:
        load_edgetpu_delegate()
    assert "libedgetpu.so.1" in str(info.value)
    manifest = manifest_for(unit_models.int8, None).model_copy(
        update={"target": "edgetpu", "runtime": "edgetpu"}
    )
    with pytest.raises(
        UnsupportedArtifactError, match="refusing to run an Edge TPU model on the CPU"
    ):
        load_runtime(unit_models.int8.path, manifest)


def test_cpu_artifact_is_never_routed_through_the_edgetpu_loader(unit_models):
    from edgefleet.agent.runtimes.edgetpu import load_edgetpu_model

    with pytest.raises(UnsupportedArtifactError, match="not an Edge TPU artifact"):
        load_edgetpu_model(unit_models.int8.path, manifest_for(unit_models.int8, None))


@pytest.mark.hardware
@pytest.mark.skipif(not HAS_TPU, reason="needs a Coral Edge TPU")
def test_runs_an_edgetpu_model_with_the_delegate(unit_models):  # pragma: no cover - hardware
    delegate = load_edgetpu_delegate()
    assert delegate is not None
