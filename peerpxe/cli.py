"""`peerpxe` command line: one subcommand per job, each in its own module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Protocol


class Subcommand(Protocol):
    """What a subcommand module provides."""

    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _subcommands() -> dict[str, Callable[[], Subcommand]]:
    # Subcommand modules import their heavy dependencies inside run(), so --help stays fast.
    def agent() -> Subcommand:
        from peerpxe import agent_command

        return agent_command

    def sim() -> Subcommand:
        from peerpxe import sim_command

        return sim_command

    def serve() -> Subcommand:
        from peerpxe import serve_command

        return serve_command

    def replay() -> Subcommand:
        from peerpxe import replay_command

        return replay_command

    def keygen() -> Subcommand:
        from peerpxe import keygen_command

        return keygen_command

    def package() -> Subcommand:
        from peerpxe import package_command

        return package_command

    def policy() -> Subcommand:
        from peerpxe import policy_command

        return policy_command

    def publish() -> Subcommand:
        from peerpxe import publish_command

        return publish_command

    def sweep() -> Subcommand:
        from peerpxe import sweep_command

        return sweep_command

    return {
        "agent": agent,
        "sim": sim,
        "serve": serve,
        "replay": replay,
        "keygen": keygen,
        "package": package,
        "policy": policy,
        "publish": publish,
        "sweep": sweep,
    }


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (loads every subcommand module)."""
    parser = argparse.ArgumentParser(
        prog="peerpxe",
        description="Peer-to-peer PXE boot: run an agent, or simulate churn at scale.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, load in _subcommands().items():
        module = load()
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `peerpxe` script."""
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
