import pytest

from edgefleet.controller.fleet.selectors import SelectorError, device_facts, parse_selector

FACTS = device_facts("pi-7", "aarch64", ["onnxruntime", "litert"], ["edgetpu"])
LABELS = {"site": "plant-3", "line": "b"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*", True),
        ("", True),
        ("site=plant-3", True),
        ("site=plant-4", False),
        ("site=plant-3,line=b", True),
        ("site=plant-3,line=c", False),
        ("site!=plant-4", True),
        ("site!=plant-3", False),
        ("accel=edgetpu", True),
        ("runtime=litert", True),
        ("runtime=tflite_runtime", False),
        ("arch=aarch64,id=pi-7", True),
        ("missing=x", False),
        ("missing!=x", True),
        (" site = plant-3 , accel = edgetpu ", True),
    ],
)
def test_selector_matching(text, expected):
    assert parse_selector(text).matches(LABELS, FACTS) is expected


@pytest.mark.parametrize("text", ["site", "=x", "a==b", "a=b=c", "a=b,,c=d", "a b=c"])
def test_malformed_selectors_are_refused(text):
    with pytest.raises(SelectorError, match="bad selector term"):
        parse_selector(text)
