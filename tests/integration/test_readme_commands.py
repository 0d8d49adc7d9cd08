"""The README and deploy/README.md say only what is true: their first two code blocks are the
two commands (set up and run the demo; run the tests, which is what CI runs), every
``edgefleet`` and ``edgefleet-agent`` command in their code blocks names subcommands and options
that exist, every repository path they name exists, every ``EDGEFLEET_*`` variable they name is
one the code reads, and the quick commands run: each command's ``--help``, and the two scripts'
second run (an up-to-date environment is not installed again)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

from edgefleet.agent.cli import build_parser
from edgefleet.agent.settings import AgentSettings
from edgefleet.controller.cli import app
from edgefleet.controller.config import Settings

REPO = Path(__file__).resolve().parents[2]
DOCS = (REPO / "README.md", REPO / "deploy" / "README.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SHELLS = {"bash", "sh", ""}
REPO_DIRS = ("deploy", "tests", "bench", "scripts", "shared", "agent", "controller", ".ci")
DIRS = "|".join(re.escape(d) for d in REPO_DIRS)
PATH_TOKEN = re.compile(rf"(?<![\w/.-])(?:\./)?((?:{DIRS})/[\w./{{}},*-]*)")
ENV_TOKEN = re.compile(r"\bEDGEFLEET_[A-Z0-9_]+\b")
INLINE = re.compile(r"(?<!`)`((?:edgefleet|edgefleet-agent) [^`]+)`(?!`)")


@dataclass(frozen=True)
class Command:
    doc: str
    program: str  # edgefleet or edgefleet-agent
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.doc}: {self.program} {' '.join(self.args)}"


def code_blocks(doc: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(doc.read_text())]


def shell_lines(block: str) -> Iterator[str]:
    """Logical lines of a shell block: continuations joined, comments and heredoc bodies out."""
    joined = block.replace("\\\n", " ")
    heredoc_end: str | None = None
    for line in joined.splitlines():
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        marker = re.search(r"<<-?\s*'?(\w+)'?", line)
        if marker:
            heredoc_end = marker.group(1)
            line = line[: marker.start()]
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            yield line


def commands_in(doc: Path) -> list[Command]:
    """The commands of the doc's shell blocks, and those it quotes inline (`edgefleet ...`)."""
    blocks = code_blocks(doc)
    lines = [line for lang, block in blocks if lang in SHELLS for line in shell_lines(block)]
    prose = FENCE.sub("", doc.read_text()).replace("\n", " ")
    lines += [span for span in INLINE.findall(prose) if "..." not in span]
    found = []
    for line in lines:
        for part in re.split(r"&&|\|\||;|\|", line):
            words = shlex.split(part)
            while words and (words[0] in ("sudo", "exec") or "=" in words[0]):
                words = words[3:] if words[:2] == ["sudo", "-u"] else words[1:]
            if words and Path(words[0]).name in ("edgefleet", "edgefleet-agent"):
                found.append(Command(doc.name, Path(words[0]).name, tuple(words[1:])))
    return found


ALL_COMMANDS = [c for doc in DOCS for c in commands_in(doc)]


def option_names(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names.update(param.opts, getattr(param, "secondary_opts", ()))
    return names


def controller_leaf(args: tuple[str, ...]) -> tuple[Any, list[str], list[str]]:
    """The click command ``args`` reach, the subcommand path and the words after it."""
    command: Any = typer.main.get_command(app)
    rest, path = list(args), []
    while getattr(command, "commands", None) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        assert name in command.commands, f"no subcommand {name!r} under {' '.join(path) or '-'}"
        command = command.commands[name]
        path.append(name)
    return command, path, rest


def test_the_first_two_code_blocks_are_the_demo_and_the_test_command():
    blocks = code_blocks(REPO / "README.md")
    assert blocks[0][1].strip() == "./scripts/try"
    assert blocks[1][1].strip() == "./scripts/test"
    for script in ("scripts/try", "scripts/test", ".ci/run"):
        assert os.access(REPO / script, os.X_OK), f"{script} is not executable"
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci[-1].strip() == "exec scripts/test", "CI must run the README's test command"


def test_the_docs_hold_edgefleet_commands_to_check():
    programs = {c.program for c in ALL_COMMANDS}
    assert programs == {"edgefleet", "edgefleet-agent"}
    assert len(ALL_COMMANDS) >= 15, [str(c) for c in ALL_COMMANDS]


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=str)
def test_every_documented_command_names_real_subcommands_and_options(command: Command):
    if command.program == "edgefleet-agent":
        parser = build_parser()
        try:
            parser.parse_args(list(command.args))
        except SystemExit as e:
            raise AssertionError(f"{command}: the agent's CLI refuses it") from e
        return
    leaf, path, rest = controller_leaf(command.args)
    assert not getattr(leaf, "commands", None), f"{command}: {path} is a group, not a command"
    known = option_names(leaf)
    for word in rest:
        if word.startswith("-") and word != "-":
            name = word.split("=", 1)[0]
            assert name in known, f"{command}: no option {name} (has {sorted(known)})"


def test_every_repository_path_the_docs_name_exists():
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        base = doc.parent
        for token in PATH_TOKEN.findall(text):
            token = token.rstrip(".,")
            if "{" in token:  # a brace list: deploy/x/{a,b}
                head, _, tail = token.partition("{")
                candidates = [head + part for part in tail.rstrip("}").split(",")]
            else:
                candidates = [token]
            for candidate in candidates:
                if not any((root / candidate).exists() or list(root.glob(candidate))
                           for root in (REPO, base)):  # fmt: skip
                    missing.append(f"{doc.name}: {candidate}")
    assert not missing, missing


def _settings_env_names() -> set[str]:
    names = {f"EDGEFLEET_{f.upper()}" for f in Settings.model_fields}
    names |= {f"EDGEFLEET_AGENT_{f.upper()}" for f in AgentSettings.model_fields}
    return names


def test_every_environment_variable_the_docs_name_is_read_by_the_code():
    sources = (
        "\n".join(
            p.read_text()
            for package in ("shared", "agent", "controller")
            for p in (REPO / package / "src").rglob("*.py")
        )
        + (REPO / "scripts" / "env.sh").read_text()
        + (REPO / "scripts" / "test").read_text()
    )
    known = _settings_env_names()
    unknown = sorted(
        {name for doc in DOCS for name in ENV_TOKEN.findall(doc.read_text())}
        - known
        - set(ENV_TOKEN.findall(sources))
    )
    assert not unknown, f"named in the docs, read nowhere: {unknown}"


@pytest.mark.parametrize(
    "path",
    sorted({tuple(controller_leaf(c.args)[1]) for c in ALL_COMMANDS if c.program == "edgefleet"}),
    ids=" ".join,
)
def test_each_documented_controller_command_shows_its_help(path: tuple[str, ...]):
    done = subprocess.run(
        [str(Path(sys.executable).parent / "edgefleet"), *path, "--help"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Usage: edgefleet" in done.stdout
    assert max(map(len, done.stdout.splitlines())) <= 80, done.stdout


def test_the_agent_shows_its_help():
    for args in (["--help"], ["run", "--help"], ["check-config", "--help"]):
        done = subprocess.run(
            [str(Path(sys.executable).parent / "edgefleet-agent"), *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "usage: edgefleet-agent" in done.stdout


def test_the_two_scripts_find_an_up_to_date_environment_and_do_not_install_again(tmp_path):
    """The scripts' second run: this test's own environment, stamped as installed, is reused
    (no pip), and the demo's help comes from it."""
    venv = Path(sys.prefix)
    stamp = subprocess.run(
        ["bash", "-c", ". scripts/env.sh && stamp_of demo"],
        cwd=REPO, env={**os.environ, "EDGEFLEET_VENV": str(venv)},
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    stamp_file = venv / ".edgefleet-demo"
    kept = stamp_file.read_text() if stamp_file.exists() else None
    stamp_file.write_text(stamp + "\n")
    try:
        done = subprocess.run(
            [str(REPO / "scripts" / "try"), "--help"],
            env={**os.environ, "EDGEFLEET_VENV": str(venv)},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        if kept is None:
            stamp_file.unlink()
        else:
            stamp_file.write_text(kept)
    assert done.returncode == 0, done.stderr
    assert "is up to date (demo packages)" in done.stdout
    assert "installing" not in done.stdout
    assert "Usage: edgefleet demo" in done.stdout
