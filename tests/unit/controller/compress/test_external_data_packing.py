"""edgefleet.controller.compress.external_data: external tensors read into the model from its
own directory, wherever in the model they sit, and refused (naming tensor and file) when the
file is outside, missing or short, or the result would pass protobuf's 2 GB limit."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.controller.compress.external_data import (
    PROTOBUF_LIMIT,
    ExternalDataError,
    ModelTooLargeError,
    external_tensors,
    pack_external_data,
    save_self_contained,
)
from support.onnx_external_models import PLACES, external_tensor, leaking_model, load
from support.onnx_session import cpu_session

SECRET = bytes(range(64))


@pytest.mark.parametrize("place", PLACES)
def test_every_place_a_tensor_can_sit_is_packed(tmp_path: Path, place: str) -> None:
    path = leaking_model(tmp_path / "m.onnx", "weights.bin", len(SECRET), place).path
    (tmp_path / "weights.bin").write_bytes(SECRET)
    model = load(path)
    count = 2 if place == "subgraph" else 1  # both branches of the If hold it
    assert [t.name for _, t in external_tensors(model)] == ["W"] * count
    packed = pack_external_data(model, path)
    assert packed is not None
    assert (packed.tensors, packed.files) == (count, ("weights.bin",))
    assert packed.bytes == count * len(SECRET)
    assert list(external_tensors(model)) == []
    (tmp_path / "packed").mkdir()  # a directory of its own: nothing to read beside it
    out = save_self_contained(model, tmp_path / "packed" / "m.onnx")
    assert list(external_tensors(load(out))) == []
    if place in ("initializer", "constant", "subgraph"):  # ones onnxruntime runs as they are
        session = cpu_session(str(out))
        leak = session.run(["leak"], {"x": np.zeros((1, 4), np.float32)})[0]
        assert leak.tobytes() == SECRET


def test_a_model_without_external_data_is_left_alone(tmp_path: Path) -> None:
    path = leaking_model(tmp_path / "m.onnx", "weights.bin", 8).path
    model = load(path)
    for _, tensor in external_tensors(model):
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
        tensor.raw_data = bytes(8)
    before = model.SerializeToString()
    assert pack_external_data(model, path) is None
    assert model.SerializeToString() == before


def _refused(tmp_path: Path, location: str, length: int = len(SECRET)) -> ExternalDataError:
    path = leaking_model(tmp_path / "m.onnx", location, length).path
    with pytest.raises(ExternalDataError) as caught:
        pack_external_data(load(path), path)
    assert caught.value.tensor == "W"
    assert caught.value.location == location
    assert f"tensor 'W' reads external data from {location!r}" in str(caught.value)
    return caught.value


def test_a_location_climbing_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(SECRET)
    (tmp_path / "model").mkdir()
    error = _refused(tmp_path / "model", "../secret.bin")
    assert "outside the model's directory" in error.reason


def test_a_symbolic_link_pointing_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(SECRET)
    (tmp_path / "model").mkdir()
    os.symlink(tmp_path / "secret.bin", tmp_path / "model" / "weights.bin")
    error = _refused(tmp_path / "model", "weights.bin")
    assert "outside the model's directory" in error.reason
    assert "secret.bin" in error.reason  # where it resolves to


def test_an_absolute_location_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(SECRET)
    assert "an absolute path" in _refused(tmp_path, str(tmp_path / "secret.bin")).reason


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    assert "no such file" in _refused(tmp_path, "weights.bin").reason


def test_a_short_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(SECRET[:10])
    error = _refused(tmp_path, "weights.bin")
    assert "the file is short: 10 bytes, the tensor reads bytes 0 to 64" in error.reason


def test_a_length_that_does_not_fit_the_shape_is_refused(tmp_path: Path) -> None:
    path = leaking_model(tmp_path / "m.onnx", "weights.bin", 64).path
    (tmp_path / "weights.bin").write_bytes(SECRET)
    model = load(path)
    (_, tensor), *_ = external_tensors(model)
    tensor.dims[0] = 100  # 100 uint8 values, 64 bytes on disk
    with pytest.raises(ExternalDataError, match="64 bytes, but its shape \\[100\\] of UINT8"):
        pack_external_data(model, path)


def test_a_model_over_2_gb_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    length = PROTOBUF_LIMIT  # with the graph around it, over the limit by a few bytes
    path = leaking_model(tmp_path / "m.onnx", "huge.bin", length).path
    with (tmp_path / "huge.bin").open("wb") as f:
        f.truncate(length)  # a sparse file: no disk is used
    model = load(path)
    with pytest.raises(ModelTooLargeError, match="over protobuf's 2 GB limit") as caught:
        pack_external_data(model, path)
    assert caught.value.size > PROTOBUF_LIMIT
    assert len(list(external_tensors(model))) == 1  # nothing was read into it


def test_saving_refuses_a_tensor_still_external(tmp_path: Path) -> None:
    model = load(leaking_model(tmp_path / "m.onnx", "weights.bin", 8).path)
    with pytest.raises(ExternalDataError, match="not packed into the model"):
        save_self_contained(model, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_a_bad_offset_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(SECRET)
    tensor = external_tensor("W", "weights.bin", 64)
    model = load(leaking_model(tmp_path / "m.onnx", "weights.bin", 64).path)
    (_, target), *_ = external_tensors(model)
    target.CopyFrom(tensor)
    next(e for e in target.external_data if e.key == "offset").value = "-8"
    with pytest.raises(ExternalDataError, match="its offset '-8' is not a non-negative integer"):
        pack_external_data(model, tmp_path / "m.onnx")
