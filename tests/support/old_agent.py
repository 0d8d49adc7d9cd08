"""The previous release's agent (wire v1), materialised from git history and run as a child.

``git archive`` extracts that release's ``shared/`` and ``agent/`` into a directory; the child
runs with ``PYTHONPATH`` pointing at their ``src`` dirs. ``edgefleet`` is a PEP 420 namespace and
PYTHONPATH entries come before the venv's editable ``.pth`` entries, so ``edgefleet.shared`` and
``edgefleet.agent`` resolve to the old code while ``edgefleet.controller`` (never imported by an
agent) would still be the new one. :func:`probe_old_code` proves it from inside such a child.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from support.agent_harness import FAST, AgentProcess, agent_env, settings_dict
from support.mosquitto import REPO

OLD_RELEASE = "d2664c7"  # the last commit before "Wire v2": the release agents still run
_MARKER = ".materialised"


class OldReleaseError(RuntimeError):
    """The previous release could not be materialised from git history."""


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    git = shutil.which("git")
    if git is None:
        raise OldReleaseError("cannot materialise the old release: git is not installed")
    return subprocess.run([git, "-C", str(repo), *args], capture_output=True, timeout=60)


def materialise_old_release(directory: Path, *, repo: Path = REPO, rev: str = OLD_RELEASE) -> Path:
    """Extract ``shared/`` and ``agent/`` of ``rev`` into ``directory`` (once; reused after).

    Raises:
        OldReleaseError: no git, no repository, ``rev`` is not in its history (a shallow
            clone), or the archive did not extract.
    """
    if (directory / _MARKER).is_file():
        return directory
    found = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if found.returncode != 0:
        raise OldReleaseError(
            f"cannot materialise the old release: commit {rev} is not in the git history of "
            f"{repo} (a shallow clone or no .git?): {found.stderr.decode(errors='replace')}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    archive = _git(repo, "archive", "--format=tar", rev, "shared", "agent")
    if archive.returncode != 0:
        raise OldReleaseError(
            f"cannot materialise the old release: git archive {rev} failed: "
            f"{archive.stderr.decode(errors='replace')}"
        )
    untar = subprocess.run(
        ["tar", "-x", "-C", str(directory)], input=archive.stdout, capture_output=True, timeout=60
    )
    for package in ("shared/src/edgefleet/shared", "agent/src/edgefleet/agent"):
        if untar.returncode != 0 or not (directory / package / "__init__.py").is_file():
            raise OldReleaseError(
                f"cannot materialise the old release: {package} missing after extracting {rev} "
                f"into {directory}: {untar.stderr.decode(errors='replace')}"
            )
    (directory / _MARKER).write_text(found.stdout.decode().strip() + "\n")
    return directory


def old_agent_env(release: Path) -> dict[str, str]:
    """The agent's test environment, with the old release first on the import path."""
    env = agent_env()
    paths = [str(release / "shared" / "src"), str(release / "agent" / "src")]
    env["PYTHONPATH"] = os.pathsep.join(paths)  # replaces any inherited path: old code only
    return env


_PROBE = """
import json, edgefleet.shared, edgefleet.agent, edgefleet.shared.wire as wire
from edgefleet.agent.settings import AgentSettings
print(json.dumps({
    "schema_version": wire.SCHEMA_VERSION,
    "supported": list(wire.SUPPORTED_SCHEMA_VERSIONS),
    "shared_file": edgefleet.shared.__file__,
    "agent_file": edgefleet.agent.__file__,
    "settings": sorted(AgentSettings.model_fields),
}))
"""


@dataclass(frozen=True)
class OldCode:
    """What a child with the old release's environment imported."""

    schema_version: int  # edgefleet.shared.wire.SCHEMA_VERSION
    supported: tuple[int, ...]  # the wire versions that code reads
    shared_file: Path  # edgefleet.shared.__file__
    agent_file: Path  # edgefleet.agent.__file__
    settings: frozenset[str]  # the keys its AgentSettings accepts (it forbids any other)


@dataclass(frozen=True)
class OldRelease:
    path: Path
    code: OldCode


def probe_old_code(release: Path) -> OldCode:
    """Import the old code in a child run as the old agent is, and say what was imported.

    Raises:
        OldReleaseError: the child could not import the old code.
    """
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        env=old_agent_env(release),
        cwd=release,
        timeout=60,
    )
    if done.returncode != 0:
        raise OldReleaseError(f"the old release does not import: {done.stderr.decode()[-2000:]}")
    found = json.loads(done.stdout)
    return OldCode(
        schema_version=found["schema_version"],
        supported=tuple(found["supported"]),
        shared_file=Path(found["shared_file"]),
        agent_file=Path(found["agent_file"]),
        settings=frozenset(found["settings"]),
    )


def old_settings_dict(known: Collection[str], **kwargs: object) -> dict[str, object]:
    """``settings_dict`` for the old agent, whose settings forbid unknown keys.

    Fast timings the old release does not have yet are left out; anything else it does not
    know is a mistake in the test.

    Raises:
        ValueError: an explicit setting the old agent does not know.
    """
    values = settings_dict(**kwargs)  # type: ignore[arg-type]
    unknown = set(values) - set(known)
    if unknown - set(FAST):
        raise ValueError(f"the old agent has no settings {sorted(unknown - set(FAST))}")
    return {key: value for key, value in values.items() if key in known}


class OldAgentProcess(AgentProcess):
    """The old release's ``python -m edgefleet.agent.cli run --config PATH``."""

    def __init__(self, release: Path, config: Path, log_path: Path) -> None:
        super().__init__(config, log_path)
        self.release = release

    def start(self) -> OldAgentProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agent.cli", "run", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=old_agent_env(self.release),
            cwd=self.release,  # not the repository: nothing there may shadow the old code
        )
        log.close()
        return self
