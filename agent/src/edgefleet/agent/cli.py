"""``edgefleet-agent`` command line: parse arguments, run the daemon, map errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from edgefleet.agent import __version__
from edgefleet.agent.errors import ConfigError
from edgefleet.agent.settings import ENV_PREFIX, AgentSettings, load_settings

EXIT_OK = 0
EXIT_CONFIG = 2


def _settings_help() -> str:
    lines = [f"Settings (TOML keys; environment variables {ENV_PREFIX}<KEY> override the file):"]
    for name, field in AgentSettings.model_fields.items():
        required = " (required)" if field.is_required() else f" (default: {field.default!r})"
        if field.default_factory is not None:
            required = ""
        lines.append(f"  {name:<24} {field.description or ''}{required}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefleet-agent",
        description="edgefleet device agent: pulls signed models over MQTT, verifies, "
        "validates and hot-swaps them, serves local inference and reports telemetry.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgefleet-agent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run the agent daemon until SIGTERM/SIGINT",
        description="Run the agent daemon until SIGTERM or SIGINT.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--config",
        metavar="PATH",
        type=Path,
        help="agent config file (TOML); without it every required setting comes from "
        f"{ENV_PREFIX}* environment variables",
    )
    commands.add_parser("check-config", help="load the settings, print them, exit").add_argument(
        "--config", metavar="PATH", type=Path, help="agent config file (TOML)"
    )
    return parser


def _run(settings: AgentSettings) -> int:
    from edgefleet.agent.agent import Agent
    from edgefleet.agent.memory import limit_malloc_arenas
    from edgefleet.shared.lifetime import end_with_parent

    limit_malloc_arenas()
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        # A handler runs between two bytecodes of the main thread, maybe inside this Event's
        # own set() (a second SIGTERM): setting it again would wait on the lock it holds.
        if not stop.is_set():
            stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    # a parent that waited for signals with them blocked (sigwait) passes the mask on: the
    # agent would never see its SIGTERM
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    end_with_parent()
    agent = Agent(settings)
    try:
        agent.start()
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        with contextlib.suppress(Exception):
            agent.stop()
        raise ConfigError(
            f"http_bind {settings.http_bind} is in use (another agent on this host?): give each "
            "agent its own port in http_bind, or set it to '' to turn the local API off"
        ) from None
    address = agent.http_address
    logging.getLogger("edgefleet.agent").info(
        "agent %s running; local API on %s",
        settings.device_id,
        f"http://{address[0]}:{address[1]}" if address else "(disabled)",
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        agent.stop()
        logging.getLogger("edgefleet.agent").info("agent %s stopped", settings.device_id)
    return EXIT_OK


def _warn_if_others_read(config: Path | None, settings: AgentSettings) -> None:
    """A config holding the broker password should be readable by the agent only (0600, or
    0640 with the agent's group, as the README installs it); say so when it is not."""
    if config is None or settings.password is None:
        return
    try:
        mode = config.stat().st_mode & 0o777
    except OSError:
        return
    if mode & 0o007:
        print(
            f"edgefleet-agent: warning: {config} holds the broker password and other users "
            f"can read it (mode {mode:04o}): chmod o-rwx {config}",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edgefleet-agent``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"edgefleet-agent: {e}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
    _warn_if_others_read(args.config, settings)
    if args.command == "check-config":
        print(settings.model_dump_json(indent=2))
        return EXIT_OK
    try:
        return _run(settings)
    except ConfigError as e:
        print(f"edgefleet-agent: {e}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
