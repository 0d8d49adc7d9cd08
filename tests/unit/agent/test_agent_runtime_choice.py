"""An operator can keep a device on some of its installed runtimes."""

import pytest

from edgefleet.agent.capabilities import measure_hello
from edgefleet.agent.errors import UnsupportedArtifactError
from edgefleet.agent.runtimes import check_runtime_allowed
from support.samples import make_manifest


def test_hello_offers_only_the_allowed_runtimes():
    everything = {r.name for r in measure_hello("pi-1", {}).runtimes}
    assert {"onnxruntime", "litert"} <= everything
    narrowed = measure_hello("pi-1", {}, ["litert"])
    assert [r.name for r in narrowed.runtimes] == ["litert"]


def test_artifact_for_a_disallowed_runtime_is_refused_with_the_reason():
    manifest = make_manifest()  # an onnx-int8 artifact
    check_runtime_allowed(manifest, None)
    check_runtime_allowed(manifest, ["onnxruntime"])
    with pytest.raises(UnsupportedArtifactError, match=r"configured for runtimes \['litert'\]"):
        check_runtime_allowed(manifest, ["litert"])
