"""The ``callbridge`` command line.

Subcommands live with the code they drive; each module in ``_COMMAND_MODULES`` exposes
``register(subparsers)`` and sets ``func`` on its parsers (a callable taking the parsed args and
returning an exit status).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from pathlib import Path

from bridge import __version__

_COMMAND_MODULES = (
    "bridge.cli.serve",
    "bridge.cli.check",
    "bridge.cli.simulator",
    "bridge.cli.tenants",
    "bridge.cli.calls",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callbridge",
        description="Bridge PBX phone calls to a realtime speech model.",
    )
    parser.add_argument("--version", action="version", version=f"callbridge {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="YAML config file (default: $CALLBRIDGE_CONFIG, else none)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    _accept_global_options(subparsers)
    return parser


def _accept_global_options(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``callbridge check --config FILE`` as well as ``callbridge --config FILE check``: every
    subcommand, at every depth, takes the global options too. SUPPRESS as default keeps a
    value given before the subcommand when none is given after it."""
    for sub in set(subparsers.choices.values()):
        if not any("--config" in action.option_strings for action in sub._actions):
            sub.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS,
                             help="YAML config file (also accepted before the subcommand)")
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_global_options(action)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    status = func(args)
    return int(status or 0)

