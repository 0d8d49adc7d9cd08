"""What building a target yields, and the progress callback every step takes: shared by the
pipeline (torch, the ``compress`` extra) and the import of artifacts built elsewhere (no torch)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.shared.manifest import ArtifactTarget

Notify = Callable[[str], None]


def quiet(_: str) -> None:
    """A ``notify`` that says nothing."""
    return None


@dataclass
class BuiltFile:
    target: ArtifactTarget
    path: Path
    details: dict[str, Any] = field(default_factory=dict)
    evaluate_as: Path | None = None  # a CPU-runnable stand-in (edgetpu -> its full-int8 source)
