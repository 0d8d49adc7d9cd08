"""Real pretrained models nobody on the team trained, taken from packages on the registry: each
wheel is downloaded once with pip (pinned by version and sha256), cached outside the repository,
and every file taken from it is checked by sha256."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path(os.environ.get("EDGEFLEET_PRETRAINED_CACHE", "/var/cache/edgefleet/pretrained"))


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel on PyPI that ships model files."""

    project: str
    version: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class PretrainedModel:
    """One model file inside a pinned wheel."""

    name: str
    wheel: Wheel
    member: str  # path inside the wheel
    sha256: str
    about: str


RAPIDOCR = Wheel(
    "rapidocr-onnxruntime",
    "1.4.4",
    "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
    "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
)
SILERO = Wheel(
    "silero-vad",
    "6.2.3",
    "silero_vad-6.2.3-py3-none-any.whl",
    "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
)
# A platform wheel (CPython 3.11, x86-64 Linux): the machines this suite runs on.
MEDIAPIPE = Wheel(
    "mediapipe",
    "0.10.21",
    "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
    "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3",
)

MODELS = {
    model.name: model
    for model in (
        PretrainedModel(
            "ppocr-cls",
            RAPIDOCR,
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
            "PaddleOCR text-direction classifier (CNN, opset 11, input [N, 3, H, W] dynamic), "
            "585 KB",
        ),
        PretrainedModel(
            "ppocr-det",
            RAPIDOCR,
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
            "PaddleOCR v4 text detector (DBNet CNN, opset 12, input [N, 3, H, W] dynamic, "
            "3-D probability-map output), 4.7 MB",
        ),
        PretrainedModel(
            "silero-vad",
            SILERO,
            "silero_vad/data/silero_vad.onnx",
            "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
            "Silero voice activity detector (stateful: audio [N, T], state [2, N, 128] fed "
            "back, int64 scalar sample rate; If subgraphs; opset 16), 2.3 MB",
        ),
        PretrainedModel(
            "silero-vad-op15",
            SILERO,
            "silero_vad/data/silero_vad_16k_op15.onnx",
            "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
            "Silero VAD, 16 kHz only, opset 15, 1.3 MB",
        ),
        PretrainedModel(
            "blazeface-short",
            MEDIAPIPE,
            "mediapipe/modules/face_detection/face_detection_short_range.tflite",
            "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
            "MediaPipe BlazeFace short-range face detector (TFLite, float16 weights, no serving "
            "signature; input [1, 128, 128, 3] float32, outputs regressors [1, 896, 16] and "
            "classificators [1, 896, 1]), 230 KB",
        ),
    )
}


class PretrainedUnavailableError(Exception):
    """The wheel could not be downloaded (no route to the package index)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tag_options(filename: str) -> list[str]:
    """pip options that fetch exactly this wheel whatever interpreter runs the tests: only the
    model files inside it are used, never its code."""
    python, abi, platform = filename.removesuffix(".whl").split("-")[-3:]
    if platform == "any":
        return []
    return ["--only-binary=:all:", "--platform", platform, "--implementation", python[:2],
            "--python-version", python[2:], "--abi", abi]  # fmt: skip


def _wheel(wheel: Wheel, cache: Path) -> Path:
    path = cache / wheel.filename
    if path.is_file() and _sha256(path) == wheel.sha256:
        return path
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache),
         *_tag_options(wheel.filename), f"{wheel.project}=={wheel.version}"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if result.returncode != 0 or not path.is_file():
        raise PretrainedUnavailableError(
            f"pip download {wheel.project}=={wheel.version} failed: {result.stderr[-2000:]}"
        )
    got = _sha256(path)
    if got != wheel.sha256:
        path.unlink()
        raise AssertionError(f"{wheel.filename}: sha256 {got}, pinned {wheel.sha256}")
    return path


def pretrained_model(name: str, cache: Path = CACHE_DIR) -> Path:
    """The cached file of the pretrained model ``name`` (one of :data:`MODELS`), checked.

    Raises:
        PretrainedUnavailableError: its wheel cannot be downloaded.
        AssertionError: a downloaded file does not match its pinned sha256.
    """
    model = MODELS[name]
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / model.sha256[:16] / Path(model.member).name
    with (cache / "pretrained.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file() and _sha256(target) == model.sha256:
            return target
        with zipfile.ZipFile(_wheel(model.wheel, cache)) as archive:
            data = archive.read(model.member)
        if hashlib.sha256(data).hexdigest() != model.sha256:
            raise AssertionError(f"{model.member} in {model.wheel.filename}: sha256 mismatch")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return target
