"""`rtseg` command line: one sub-command per module, dispatched here."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from .. import errors
from .._version import __version__
from ..errors import RtsegError, notes_of

# sub-command name -> module in rtseg.cli (each defines `register(subparsers)`)
COMMANDS = {
    "eval": "eval_cmd",
    "models": "models_cmd",
    "run": "run_cmd",
    "train": "train_cmd",
    "view": "view_cmd",
    "serve": "serve_cmd",
    "keys": "keys_cmd",
    "bench": "bench_cmd",
    "export": "export_cmd",
    "calibrate": "calibrate_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtseg", description="Real-time video semantic segmentation.")
    parser.add_argument("--version", action="version", version=f"rtseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    from .common import CommandParser  # with the commands: `import rtseg.cli` stays cheap

    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    for module in COMMANDS.values():
        importlib.import_module(f"{__name__}.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .console import reader_safe_console

    with reader_safe_console():  # a console reader that goes away must not end the run
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    from .console import Terminated, stop_while_starting

    try:
        with stop_while_starting():
            parser = build_parser()
            args = parser.parse_args(argv)
    except KeyboardInterrupt:  # a traceback from inside `import torch` said nothing useful
        print("rtseg: interrupted while starting", file=sys.stderr)
        return 130
    except Terminated:
        print("rtseg: stopped (SIGTERM) while starting", file=sys.stderr)
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        args = parser.parse_args(["run", *(argv or [])]) if "run" in COMMANDS else None
        if args is None:
            parser.print_help()
            return 2
    return run_reported(f"rtseg {args.command}", lambda: args.func(args))


def run_reported(prog: str, command: Callable[[], int | None]) -> int:
    """Run ``command`` and return its exit status, reporting its failures as every rtseg command
    does (each sub-command here, and the ``python -m`` tools' mains): an RtsegError is one line,
    "PROG: error: MESSAGE", exit status 2; Ctrl-C is "PROG: interrupted", 130; anything else is
    a bug and keeps its traceback. A console reader that goes away, or a stderr closed at start,
    must not end the command (the ``python -m`` tools come here without ``main``)."""
    from .console import reader_safe_console

    with reader_safe_console():
        return _reported(prog, command)


def _reported(prog: str, command: Callable[[], int | None]) -> int:
    try:
        return int(command() or 0)
    except RtsegError as exc:
        # Notes say what else went wrong (calibration: a list edited since its id was recorded)
        print(f"{prog}: error: {'; '.join([str(exc), *notes_of(exc)])}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not errors.NATIVE_NOTES:  # 3.10's traceback leaves them out (the async scheduler's keyframe)
            for note in notes_of(exc):
                print(f"{prog}: note: {note}", file=sys.stderr)
        raise
