"""``edgefleet-agent`` command line: parse arguments, run the daemon, map errors to exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edgefleet.agent import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefleet-agent",
        description="edgefleet device agent: pulls signed models over MQTT, verifies, "
        "validates and hot-swaps them, serves local inference and reports telemetry.",
    )
    parser.add_argument("--version", action="version", version=f"edgefleet-agent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="run the agent daemon")
    run.add_argument("--config", metavar="PATH", help="agent config file (TOML)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edgefleet-agent``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    print("edgefleet-agent: the daemon is not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
