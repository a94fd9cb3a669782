"""The ``ip2p`` command line: argument parsing and printing only, one module per command.

Each module here has ``register(subparsers)``; this file collects them, runs the chosen command and
turns every :class:`ip2p.errors.Ip2pError` into one line on stderr and exit code 2. Shared option
groups live in :mod:`ip2p.cli.common`. Library modules hold no argparse. Heavy imports happen inside
the commands, so ``ip2p --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import Ip2pError
from .common import apply_threads

#: Modules that add sub-commands (each has ``register(subparsers)``), in --help order.
COMMAND_MODULES = (
    "ip2p.cli.edit",
    "ip2p.cli.video",
    "ip2p.cli.convert",
    "ip2p.cli.batch",
    "ip2p.cli.verify",
    "ip2p.cli.serve",
    "ip2p.cli.ui",
    "ip2p.cli.train",
    "ip2p.cli.shapes",
    "ip2p.cli.datagen",
    "ip2p.cli.eval",
)


class Parser(argparse.ArgumentParser):
    """argparse that exits with code 2 and a one-line message (its default is a usage dump)."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"ip2p: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from ..version import __version__

    parser = Parser(prog="ip2p", description="Instruction-guided image editing (InstructPix2Pix).")
    parser.add_argument("--version", action="version", version=f"ip2p {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        apply_threads(args)
        code = args.func(args)
    except Ip2pError as exc:
        print(f"ip2p: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ip2p: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
