"""Disk size and install time of each way to install edgefleet, each into a fresh venv built
from this tree (non-editable, as a user's ``pip install`` would), with a pip cache of its own so
nothing comes from an earlier run:

    python bench/install_size.py [--only NAME[,NAME...]] [--arm64]

Each path is installed twice: ``fresh`` is the first install into an empty venv, ``repeat`` the
same command again (everything already there). Sizes are of the whole venv (pip itself
included), with and without the ``__pycache__`` pip compiles at install time, and the largest
packages. ``--arm64`` adds the agent paths installed by the root's own pip in the arm64 root of
the test suite (``tests/support/arm64.py``, what a Raspberry Pi would install; built and cached
in ``/var/cache/edgefleet`` the first time). Prints JSON on its last line; each path's
``ratio`` is its size over its goal where it has one (<= 1.0 meets it).

Goals (issue 16): the agent with onnxruntime, installed as the README installs it on a device
(``agent-onnx-device``: ``pip install --no-compile``, the modules it imports compiled once into
its cache dir, counted in ``total_mb``), <= 150 MB; the controller with its compression extra
<= 1.5 GB. The TFLite conversion extra (litert-torch: jax, the LiteRT converter) and the
TensorFlow extra are measured and reported beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH_PIN = "torch==2.13.0"  # the CPU build; an unpinned torch pulls the CUDA packages


@dataclass(frozen=True)
class InstallPath:
    name: str
    packages: tuple[str, ...]  # relative to the repository, with extras
    torch_first: bool = False
    goal_mb: float | None = None
    # The device recipe (README, "Install on a Raspberry Pi"): pip install --no-compile, and the
    # unit points PYTHONPYCACHEPREFIX at the agent's cache dir, so only the modules the agent
    # imports get compiled, once; ``imports`` are those, and their cache counts in the total.
    no_compile: bool = False
    imports: str = ""


AGENT_IMPORTS = "import edgefleet.agent.cli, edgefleet.agent.agent, edgefleet.agent.http_api"


PATHS = (
    InstallPath("agent-onnx", ("shared", "agent[onnx]")),
    InstallPath("agent-litert", ("shared", "agent[litert]")),
    InstallPath(
        "agent-onnx-device",
        ("shared", "agent[onnx]"),
        goal_mb=150,
        no_compile=True,
        imports=f"{AGENT_IMPORTS}; import onnxruntime",
    ),
    InstallPath(
        "agent-litert-device",
        ("shared", "agent[litert]"),
        no_compile=True,
        imports=f"{AGENT_IMPORTS}; from ai_edge_litert import interpreter",
    ),
    InstallPath("controller", ("shared", "controller")),
    InstallPath("controller-compress", ("shared", "controller[compress]"), True, 1500),
    InstallPath("controller-compress-tflite", ("shared", "controller[compress,tflite]"), True),
    InstallPath("demo", ("shared", "agent[onnx,litert]", "controller[compress,tflite]"), True),
    InstallPath(
        "controller-tensorflow", ("shared", "controller[compress,tflite,tensorflow]"), True
    ),
)
ARM64_PATHS = ("agent-onnx", "agent-litert", "agent-onnx-device", "agent-litert-device")


def tree_mb(path: Path, *, skip_pycache: bool = False) -> float:
    total = 0
    for root, dirs, files in os.walk(path):
        if skip_pycache:
            dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                total += os.lstat(full).st_size
    return round(total / 2**20, 1)


def largest(site: Path, count: int = 8) -> dict[str, float]:
    sizes = {p.name: tree_mb(p) for p in site.iterdir() if p.is_dir() and "dist-info" not in p.name}
    top = sorted(sizes.items(), key=lambda kv: kv[1], reverse=True)[:count]
    return dict(top)


def spec(package: str) -> str:
    """``agent[onnx]`` as the path of this tree's ``agent`` with its extras."""
    name, bracket, extras = package.partition("[")
    return f"{REPO / name}{bracket}{extras}"


def timed(argv: Sequence[str], env: dict[str, str], timeout: float = 3600) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return round(time.monotonic() - started, 1)


def install(path: InstallPath, work: Path) -> dict[str, object]:
    venv = work / path.name
    env = {**os.environ, "PIP_CACHE_DIR": str(work / f"cache-{path.name}")}
    env.pop("VIRTUAL_ENV", None)
    python = str(venv / "bin" / "python")
    specs = [spec(p) for p in path.packages]
    steps: list[list[str]] = []
    if path.torch_first:
        steps.append([python, "-m", "pip", "install", "-q", TORCH_PIN])
    compile_flag = ["--no-compile"] if path.no_compile else []
    steps.append([python, "-m", "pip", "install", "-q", *compile_flag, *specs])
    if path.no_compile:  # the device recipe also drops setuptools (Python 3.11's venv adds it)
        steps.append([python, "-m", "pip", "uninstall", "-q", "-y", "setuptools"])
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for step in steps:
        timed(step, env)
    fresh = round(time.monotonic() - started, 1)
    repeat = sum(timed(step, env) for step in steps if "uninstall" not in step)
    row: dict[str, object] = {"fresh_s": fresh, "repeat_s": round(repeat, 1)}
    if path.imports:
        clean = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cache = work / f"pycache-{path.name}"
        subprocess.run(
            [python, "-c", path.imports],
            env={**clean, "PYTHONPYCACHEPREFIX": str(cache)}, check=True, timeout=600,
        )  # fmt: skip
        row["pycache_mb"] = tree_mb(cache)
    row |= sizes(path, venv, row.get("pycache_mb", 0.0))
    shutil.rmtree(venv)
    shutil.rmtree(work / f"cache-{path.name}", ignore_errors=True)
    return row


def sizes(path: InstallPath, venv: Path, cache_mb: object) -> dict[str, object]:
    site = next((venv / "lib").glob("python3*/site-packages"))
    size = tree_mb(venv)
    total = round(size + float(cache_mb), 1)  # type: ignore[arg-type]
    row: dict[str, object] = {
        "size_mb": size,
        "size_without_pyc_mb": tree_mb(venv, skip_pycache=True),
        "total_mb": total,
        "largest_mb": largest(site),
    }
    if path.goal_mb is not None:
        row["goal_mb"] = path.goal_mb
        row["ratio"] = round(total / path.goal_mb, 3)
    return row


def install_arm64(name: str, work: Path) -> dict[str, object]:
    sys.path.insert(0, str(REPO / "tests"))
    from support.arm64 import ensure_binfmt, ensure_root
    from support.arm64_install import build_agent_wheels

    ensure_binfmt()
    wheels = build_agent_wheels(work / "wheels")
    root = ensure_root().with_binds(work)
    path = next(p for p in PATHS if p.name == name)
    extras = "[" + path.packages[1].partition("[")[2]
    venv = work / f"arm64-{name}"
    inside = str(venv)  # the bind makes the host path the same in the root
    compile_flag = ["--no-compile"] if path.no_compile else []
    pip = [f"{inside}/bin/python", "-m", "pip", "install", "-q", "--no-cache-dir", *compile_flag,
           str(wheels[0]), f"{wheels[1]}{extras}"]  # fmt: skip
    started = time.monotonic()
    root.run(["/usr/bin/python3", "-m", "venv", inside], timeout=600)
    root.run(pip, timeout=3600)
    if path.no_compile:
        root.run([f"{inside}/bin/python", "-m", "pip", "uninstall", "-q", "-y", "setuptools"])
    row: dict[str, object] = {"fresh_s_emulated": round(time.monotonic() - started, 1)}
    if path.imports:
        cache = work / f"arm64-pycache-{name}"
        root.run(
            [f"{inside}/bin/python", "-c", path.imports], cpu="cortex-a72", timeout=1800,
            env={"PYTHONPYCACHEPREFIX": str(cache)},
        )  # fmt: skip
        row["pycache_mb"] = tree_mb(cache)
    row |= sizes(path, venv, row.get("pycache_mb", 0.0))
    shutil.rmtree(venv)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated path names (default: all)")
    parser.add_argument("--arm64", action="store_true", help="also the agent paths on arm64")
    args = parser.parse_args()
    names = [p.name for p in PATHS]
    chosen = args.only.split(",") if args.only else names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown path(s) {unknown}: choose from {names}")
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="edgefleet-install-") as tmp:
        work = Path(tmp)
        for path in PATHS:
            if path.name in chosen:
                print(f"installing {path.name} ...", file=sys.stderr, flush=True)
                results[path.name] = install(path, work)
                print(f"  {json.dumps(results[path.name])}", file=sys.stderr, flush=True)
        if args.arm64:
            for name in ARM64_PATHS:
                if name in chosen:
                    print(f"installing {name} on arm64 ...", file=sys.stderr, flush=True)
                    results[f"arm64-{name}"] = install_arm64(name, work)
                    print(f"  {json.dumps(results[f'arm64-{name}'])}", file=sys.stderr)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
