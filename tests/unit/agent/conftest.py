"""Tiny real models for agent unit tests, built once per session."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from support import agent_models


@pytest.fixture(scope="session")
def unit_models(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("unit-models")
    return SimpleNamespace(
        a=agent_models.linear_classifier(d / "a.onnx", seed=1),
        b=agent_models.linear_classifier(d / "b.onnx", seed=2),
        nan=agent_models.nan_model(d / "nan.onnx"),
        int8=agent_models.tflite_int8_classifier(d / "int8.tflite"),
        add=agent_models.tflite_add(d / "add.tflite"),
    )
