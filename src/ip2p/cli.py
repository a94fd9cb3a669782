"""The ``ip2p`` command line: argument parsing and printing only.

Each area owns its sub-commands in a ``commands`` module with ``register(subparsers)``; this file
collects them, runs the chosen one and turns every :class:`ip2p.errors.Ip2pError` into one line on
stderr and exit code 2. Heavy imports happen inside the commands, so ``ip2p --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import Ip2pError

#: Modules that add sub-commands (each has ``register(subparsers)``), in --help order.
COMMAND_MODULES = (
    "ip2p.commands",
    "ip2p.convert",
    "ip2p.batch",
    "ip2p.server",
    "ip2p.ui",
    "ip2p.train.commands",
    "ip2p.shapes.commands",
    "ip2p.datagen.commands",
)


class _Parser(argparse.ArgumentParser):
    """argparse that exits with code 2 and a one-line message (its default is a usage dump)."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"ip2p: error: {message} (see `{self.prog} --help`)\n")


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` for a heavy CPU command; :func:`main` checks and applies it before the command runs."""
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; on a busy machine, "
                                                    "for example beside a training run, fewer are often faster)")


def _apply_threads(args: argparse.Namespace) -> None:
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if threads < 1:
        from .errors import BadOptions

        raise BadOptions(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="ip2p", description="Instruction-guided image editing (InstructPix2Pix).")
    parser.add_argument("--version", action="version", version=f"ip2p {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (exc.name == name or name.startswith(exc.name + ".")):
                continue  # that area is not part of this install yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        _apply_threads(args)
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
