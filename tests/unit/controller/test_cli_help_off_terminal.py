"""``edgefleet ... --help`` without a terminal (piped, in CI, in a log): every command's help
stays whole at 80 columns, wrapped rather than cut with an ellipsis."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import typer

from edgefleet.controller import cli


def command_paths(command: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of a (Typer's own, vendored) click command tree."""
    paths = [prefix]
    if hasattr(command, "commands"):  # a group
        for name, sub in sorted(command.commands.items()):
            paths += command_paths(sub, (*prefix, name))
    return paths


PATHS = command_paths(typer.main.get_command(cli.app))


def test_every_command_is_walked() -> None:
    assert ("rollout", "start") in PATHS
    assert ("device", "enroll") in PATHS
    assert len(PATHS) > 20


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "edgefleet")
def test_help_is_whole_at_80_columns_off_a_terminal(path: tuple[str, ...]) -> None:
    env = {"COLUMNS": "80", "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.controller.cli", *path, "--help"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Usage: "), result.stdout
    assert "…" not in result.stdout, result.stdout
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]


def test_an_environment_variable_name_is_printed_whole() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.controller.cli", "device", "enroll", "--help"],
        capture_output=True, text=True, env={"COLUMNS": "80", "PYTHONPATH": ":".join(sys.path)},
        timeout=60, check=False,
    )  # fmt: skip
    assert "EDGEFLEET_BROKER_PUBLIC_URL" in result.stdout
