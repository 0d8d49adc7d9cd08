"""Inputs that look like what the pretrained models in :mod:`support.pretrained` were trained on:
rendered text lines (upright or upside down, the PaddleOCR direction classifier's two classes)
and pages of text for the PaddleOCR detector, preprocessed as PaddleOCR does."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = (
    "invoice", "total", "paid", "edge", "fleet", "model", "Rollout", "wave 2", "2026-12-01",
    "ORDER 1182", "device", "latency", "hello world", "receipt", "cash", "Tax 7%", "Pi 4",
    "serial 42", "OK", "battery", "sensor", "camera 3", "v0.2.0", "€ 12.50",
)  # fmt: skip

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _colour(rng: np.random.Generator, low: int, high: int) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(low, high, 3))
    return r, g, b


def text_lines(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` text-line crops [N, 3, 48, 192] float32 normalised to [-1, 1] (the direction
    classifier's input) and their labels: 0 upright, 1 rotated by 180 degrees (alternating)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(count):
        font = ImageFont.load_default(size=int(rng.integers(22, 32)))
        image = Image.new("RGB", (192, 48), _colour(rng, 190, 256))
        text = " ".join(rng.choice(WORDS, 2))
        ImageDraw.Draw(image).text(
            (int(rng.integers(2, 24)), int(rng.integers(2, 12))),
            text,
            fill=_colour(rng, 0, 90),
            font=font,
        )
        flipped = i % 2
        if flipped:
            image = image.rotate(180)
        pixels = np.asarray(image, np.float32) / 255.0
        images.append(((pixels - 0.5) / 0.5).transpose(2, 0, 1))
        labels.append(flipped)
    return np.stack(images), np.array(labels, np.int64)


def text_pages(count: int, size: tuple[int, int] = (256, 256), seed: int = 0) -> np.ndarray:
    """``count`` pages [N, 3, H, W] float32 of scattered text lines, normalised with the
    ImageNet mean and deviation (the detector's input)."""
    rng = np.random.default_rng(seed)
    height, width = size
    pages = []
    for _ in range(count):
        image = Image.new("RGB", (width, height), _colour(rng, 200, 256))
        draw = ImageDraw.Draw(image)
        for _line in range(int(rng.integers(3, 8))):
            font = ImageFont.load_default(size=int(rng.integers(14, 30)))
            draw.text(
                (int(rng.integers(0, width // 2)), int(rng.integers(0, height - 30))),
                " ".join(rng.choice(WORDS, int(rng.integers(1, 4)))),
                fill=_colour(rng, 0, 90),
                font=font,
            )
        pixels = np.asarray(image, np.float32) / 255.0
        pages.append(((pixels - _IMAGENET_MEAN) / _IMAGENET_STD).transpose(2, 0, 1))
    return np.stack(pages).astype(np.float32)
