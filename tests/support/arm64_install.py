"""Installing into the arm64 root (:mod:`support.arm64`): this tree's two wheels, a cached venv
of the agent's dependencies, a venv of the agent per test session, single runtime releases; and
running the agent there, emulating one CPU model.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from support.agent_harness import AgentProcess
from support.arm64 import REPO, Arm64Root, cache_lock, remove_tree, tail_text


def build_agent_wheels(out_dir: Path) -> tuple[Path, Path]:
    """``pip wheel --no-deps ./shared ./agent`` from this tree: (shared, agent) wheels."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out_dir),
           str(REPO / "shared"), str(REPO / "agent")]  # fmt: skip
    built = subprocess.run(pip, capture_output=True, text=True, timeout=300, check=False)
    if built.returncode != 0:
        raise RuntimeError(f"pip wheel failed ({built.returncode}):\n{built.stderr[-3000:]}")
    (shared,) = out_dir.glob("edgefleet_shared-*.whl")
    (agent,) = out_dir.glob("edgefleet_agent-*.whl")
    return shared, agent


def aarch64_requirements() -> dict[str, Requirement]:
    """The agent's runtime requirements (extras ``onnx`` and ``litert``) that apply on aarch64,
    by distribution name."""
    project = tomllib.loads((REPO / "agent" / "pyproject.toml").read_text())["project"]
    found = {}
    for extra in ("onnx", "litert"):
        for line in project["optional-dependencies"][extra]:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None or marker.evaluate({"platform_machine": "aarch64"}):
                found[requirement.name] = requirement
    return found


def deps_key() -> str:
    """What the agent's dependencies depend on: the two pyproject files."""
    digest = hashlib.sha256()
    for name in ("agent/pyproject.toml", "shared/pyproject.toml"):
        digest.update((REPO / name).read_bytes())
    return digest.hexdigest()[:16]


def ensure_deps_venv(root: Arm64Root, wheels: tuple[Path, Path], timeout: float = 1800) -> Path:
    """A venv in the root with every dependency of ``edgefleet-agent[onnx,litert]`` installed
    by the root's own pip from PyPI (about 3.5 minutes the first time), but not the agent.

    Returns its directory on the host. ``wheels`` must be visible in the root (a bind).
    """
    venv = root.path / "opt" / "edgefleet" / f"deps-{deps_key()}"
    complete = venv / ".complete"
    with cache_lock(root.path.parent):
        if complete.exists():
            return venv
        remove_tree(venv)
        venv.parent.mkdir(parents=True, exist_ok=True)
        python = str(root.inside(venv) / "bin" / "python")
        shared, agent = (str(w.resolve()) for w in wheels)
        for argv in (
            ["/usr/bin/python3", "-m", "venv", str(root.inside(venv))],
            [python, "-m", "pip", "install", "-q", shared, f"{agent}[onnx,litert]"],
            [python, "-m", "pip", "uninstall", "-q", "-y", "edgefleet-agent", "edgefleet-shared"],
        ):
            root.run(argv, timeout=timeout)
        complete.write_text(" ".join(w.name for w in wheels) + "\n")
    return venv


@dataclass(frozen=True)
class AgentVenv:
    """A venv holding only this tree's two wheels, over the cached dependency venv."""

    path: Path  # the same path on the host and in the root (a bind)
    deps: Path  # the dependency venv, on the host

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    @property
    def agent(self) -> str:
        return str(self.path / "bin" / "edgefleet-agent")


def install_agent(root: Arm64Root, wheels: tuple[Path, Path], where: Path) -> AgentVenv:
    """Install the two wheels with ``--no-deps`` into a fresh venv at ``where`` (a directory
    shared with the root), over the cached dependencies, and ``pip check`` the result.

    Raises:
        subprocess.CalledProcessError: the install failed or a requirement is not met.
    """
    deps = ensure_deps_venv(root, wheels)
    version = root.python_version()
    venv = AgentVenv(where.resolve(), deps)
    root.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv.path)], timeout=300)
    site = venv.path / "lib" / f"python{version}" / "site-packages"
    deps_site = root.inside(deps) / "lib" / f"python{version}" / "site-packages"
    (site / "_edgefleet_deps.pth").write_text(f"{deps_site}\n")  # pip and the deps come from it
    wheel_paths = [str(w.resolve()) for w in wheels]
    root.run([venv.python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", *wheel_paths])
    root.run([venv.python, "-m", "pip", "check"], timeout=600)
    return venv


def install_runtime(root: Arm64Root, name: str, version: str, timeout: float = 600) -> Path:
    """``name==version`` alone (no dependencies) for the root's CPython on aarch64, in a cached
    directory of the root (returned as the root sees it), installed by the host's pip.

    Raises:
        RuntimeError: pip found no such wheel, or could not fetch it.
    """
    python = root.python_version()
    target = root.path / "opt" / "edgefleet" / "runtimes" / f"cp{python.replace('.', '')}"
    target = target / f"{name}-{version}"
    with cache_lock(root.path.parent):
        if not target.is_dir():
            building = target.with_name(f"{target.name}.tmp-{os.getpid()}")
            remove_tree(building)
            pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                   "--only-binary=:all:", *_platform_options(root.glibc()),
                   "--python-version", python, "--implementation", "cp",
                   "--target", str(building), f"{name}=={version}"]  # fmt: skip
            done = subprocess.run(pip, capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0:
                remove_tree(building)
                raise RuntimeError(f"pip cannot install {name}=={version}: {done.stderr[-2000:]}")
            os.rename(building, target)
    return root.inside(target)


def _platform_options(glibc: tuple[int, int]) -> list[str]:
    """pip's ``--platform`` for every manylinux tag a root with this glibc accepts (pip does
    not widen an explicit PEP 600 tag by itself)."""
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_aarch64" for m in range(minor, 16, -1)]
    return [option for tag in (*tags, "manylinux2014_aarch64") for option in ("--platform", tag)]


class Arm64AgentProcess(AgentProcess):
    """``edgefleet-agent run`` from an :class:`AgentVenv`, emulating one CPU model; stops like
    :class:`support.agent_harness.AgentProcess` (so a fleet can stop it), given the time an
    emulated process needs."""

    kill_wait_s = 30.0
    stop_wait_s = 60.0

    def __init__(
        self, root: Arm64Root, venv: AgentVenv, config: Path, log_path: Path, cpu: str
    ) -> None:
        super().__init__(config, log_path)
        self.root = root
        self.venv = venv
        self.cpu = cpu

    def start(self) -> Arm64AgentProcess:
        argv = [self.venv.agent, "run", "--config", str(self.config.resolve())]
        self.proc = self.root.popen(argv, cpu=self.cpu, log_path=self.log_path)
        return self

    def log(self) -> str:
        return tail_text(self.log_path, 1_000_000)


# Session fixtures (with ``arm64_root``), bound by the test modules that use them. Each is
# idempotent within the session's base temp dir, so two modules binding them share one build.


@pytest.fixture(scope="session")
def agent_wheels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """This tree's two wheels, built once per session."""
    out = tmp_path_factory.getbasetemp() / "arm64-wheels"
    with cache_lock(out.parent):
        if not (out / ".built").exists():
            remove_tree(out)
            build_agent_wheels(out)
            (out / ".built").touch()
    (shared,) = out.glob("edgefleet_shared-*.whl")
    (agent,) = out.glob("edgefleet_agent-*.whl")
    return shared, agent


@pytest.fixture(scope="session")
def arm64_deps(arm64_root: Arm64Root, agent_wheels: tuple[Path, Path]) -> Path:
    """The cached dependency venv (host path)."""
    return ensure_deps_venv(arm64_root, agent_wheels)


@pytest.fixture(scope="session")
def arm64_agent(
    arm64_root: Arm64Root,
    agent_wheels: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> AgentVenv:
    """The agent installed from this tree's wheels in the root, once per session."""
    where = tmp_path_factory.getbasetemp() / "arm64-agent-venv"
    deps = ensure_deps_venv(arm64_root, agent_wheels)
    with cache_lock(where.parent):
        if not (where / ".installed").exists():
            remove_tree(where)
            install_agent(arm64_root, agent_wheels, where)
            (where / ".installed").touch()
    return AgentVenv(where.resolve(), deps)
