"""Argument helpers shared by sub-commands."""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ..engine.backends import ALL_PRECISIONS, BACKEND_SPECS, CUDA_ONLY
from ..errors import ConfigError
from ..models import DEFAULT_MODEL, list_models
from ..signals import Handler, restore, take
from ..sink.file import file_clash
from .console import Terminated

__all__ = ["Terminated"]  # defined with the console, which main() imports before anything heavy


class CtrlC:
    """SIGINT for a command that writes outputs: the first Ctrl-C stops it (KeyboardInterrupt, as
    usual), and from then on, while its outputs are closed, the press that users repeat is answered
    with what is happening instead of abandoning a video that is unreadable until its index is
    written on close. Each close is bounded; the press after that abandons them. At a normal end
    the command says, through ``closing``, when its outputs are being closed."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.stopping = False
        self.closing: Callable[[], bool] = lambda: False  # outputs closing at a normal end
        self._warned = False
        self._previous: Handler | None = None

    def _on_sigint(self, signum: int, _frame: object) -> None:
        if not (self.stopping or self.closing()):
            self.stopping = True
            raise KeyboardInterrupt
        if not self._warned:
            self._warned = True
            print(
                f"\nrtseg {self.command}: closing the outputs (a video is unreadable until closed); "
                "Ctrl-C again to abandon them",
                file=sys.stderr,
                flush=True,
            )
            return
        self._restore()
        raise KeyboardInterrupt

    def _restore(self) -> None:
        restore(signal.SIGINT, self._previous)
        self._previous = None

    def __enter__(self) -> CtrlC:
        self._previous = take(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()


class CommandParser(argparse.ArgumentParser):
    """The parser of a sub-command. With ``intermixed`` set (by the command's ``register``), its
    positionals and options mix in any order, as users type them (``rtseg run clip.mp4 --frames 2
    out.mp4``); argparse's default takes the positionals in one run, and this one then failed with
    "unrecognized arguments: out.mp4". The top-level parser, which holds the sub-commands, cannot
    parse intermixed, so each sub-command's parser does."""

    intermixed = False
    _inner = False  # parse_known_intermixed_args calls parse_known_args itself

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if not self.intermixed or self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def output_file(text: str) -> Path:
    """An argparse type for a file to write: ``~`` is the home folder (the shell leaves a quoted
    '~/r.json' as it is), and a name ending in a path separator is refused: the user meant a
    folder (``--out runs/new/``), and ``Path()`` drops the separator, so a file named ``new`` was
    written instead."""
    if text.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)):
        raise argparse.ArgumentTypeError(
            f"{text} ends in {text[-1]!r}, so it names a folder: give the name of a file to write in it"
        )
    return Path(text).expanduser()


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H); argparse shows the ValueError's message."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must look like 1024x512 (WIDTHxHEIGHT), got {text!r}"
        ) from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


N = TypeVar("N", int, float)


def ranged(convert: Callable[[str], N], expected: str, valid: Callable[[N], bool]) -> Callable[[str], N]:
    """An argparse type: ``convert`` the text and keep it when ``valid``; otherwise argparse says
    "argument --FLAG: expected EXPECTED, got VALUE", naming the flag rather than the field of the
    dataclass the value goes on to fill."""

    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not valid(value):
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            raise argparse.ArgumentTypeError(f"expected {expected}, got {shown}")
        return value

    return parse


# Seconds and rates: finite and above 0.
positive_float = ranged(float, "a finite number > 0", lambda v: 0 < v < math.inf)
# Counts that must be at least 1, and those that may be 0.
positive_int = ranged(int, "a whole number >= 1", lambda v: v >= 1)
whole_number = ranged(int, "a whole number >= 0", lambda v: v >= 0)


PathArg = str | os.PathLike[str]


def refuse_overwrites(
    outputs: Sequence[tuple[str, PathArg | None]],
    inputs: Sequence[tuple[str, PathArg | Iterable[PathArg] | None]] = (),
    folders: Sequence[tuple[str, PathArg | None]] = (),
) -> None:
    """Refuse, before any work, an output (``(flag, path)``; None: not asked for) that is the same
    file as an input (one path, or the files of a source) or as another output, by any spelling
    (./, .., a symbolic or a hard link), or that lies inside an input folder (a dataset). Written
    at the end, a report replaced the checkpoint, calibration list or video the command had just
    read, or the other output."""
    given = [(flag, Path(path)) for flag, path in outputs if path is not None]
    for i, (flag, path) in enumerate(given):
        for input_flag, files in inputs:
            if files is None:
                continue
            group = [files] if isinstance(files, (str, os.PathLike)) else list(files)
            clash = file_clash(path, group)
            if clash is not None:
                raise ConfigError(
                    f"{flag} {path} would overwrite {clash}, an input ({input_flag}): write {flag} "
                    "to another file"
                )
        for folder_flag, folder in folders:
            if folder is not None and _inside(path, Path(folder)):
                raise ConfigError(
                    f"{flag} {path} is inside {folder}, the {folder_flag} dataset folder, where it "
                    f"could replace the dataset's files: write {flag} to a file outside it"
                )
        for other_flag, other in given[:i]:
            if file_clash(path, [other]) is not None:
                raise ConfigError(
                    f"{other_flag} {other} and {flag} {path} are one file ({path.resolve()}): the "
                    "one written last would replace the other; give each its own file"
                )


def _inside(path: Path, folder: Path) -> bool:
    """``path`` lies in ``folder``, as spelt (a folder of symbolic links to the files) or resolved."""
    spelt = [Path(os.path.abspath(p)) for p in (path, folder)]
    resolved = [p.resolve() for p in (path, folder)]
    return any(p.is_relative_to(f) for p in (spelt[0], resolved[0]) for f in (spelt[1], resolved[1]))


def write_output(path: Path, option: str, write: Callable[[Path], object]) -> None:
    """Call ``write(path)``; an OSError (a full disk, a folder that vanished) becomes a ConfigError
    naming the option, so earlier outputs and the printed results stay as they are."""
    try:
        write(path)
    except OSError as exc:
        raise ConfigError(f"{option}: cannot write {path}: {exc.strerror or exc}") from None


# rtseg.schedule's keywords and the flags that fill them: its errors name the keyword.
SCHEDULER_FLAGS = {
    "target_keyframe_rate": "--target-keyframe-rate",
    "max_interval": "--max-interval",
    "flow_stride": "--flow-stride",
    "interval": "--interval",
    "threshold": "--threshold",
    "warp": "--warp",
    "change": "--change",
}
# Words prose uses too ("the flow warp"): only their keyword=value form names the keyword.
_FLAG_ONLY_WITH_VALUE = frozenset({"warp", "change"})
_KEYWORD = re.compile(
    rf"(?<![\w-])({'|'.join(sorted(SCHEDULER_FLAGS, key=len, reverse=True))})\b(?:=('[^']*'|True|False))?"
)


def scheduler_flag_text(message: str) -> str:
    """A scheduler error as the CLI user reads it: max_interval is --max-interval, warp=False is
    --no-warp, change='flow' is --change flow (not inside a flag: --max-interval keeps its name)."""

    def flag(match: re.Match[str]) -> str:
        keyword, value = match.groups()
        name = SCHEDULER_FLAGS[keyword]
        if value is None:
            return match[0] if keyword in _FLAG_ONLY_WITH_VALUE else name
        if value in ("True", "False"):
            return name if value == "True" else "--no-" + name[2:]
        return f"{name} {value.strip(chr(39))}"

    return _KEYWORD.sub(flag, message)


@contextmanager
def scheduler_flags() -> Iterator[None]:
    """Re-raise a ConfigError of scheduler set-up (make_scheduler, Scheduler.check) naming flags."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(scheduler_flag_text(str(exc))) from None


# --precision for run and serve, which take any backend name (auto included) and check the pair
# in engine_place, before the model loads.
PRECISION_HELP = (
    f"{', '.join(ALL_PRECISIONS)} (default fp32); a backend runs some of them, and the error for "
    "one it does not names those it does; int8 uses the calibration from `rtseg calibrate`"
)


# --device, as every command that loads an engine takes it: unset, rtseg.engine.load picks the
# backend's own default (engine.backends.default_device).
DEVICE_HELP = (
    f"cpu, cuda[:N] or gpu (OpenVINO's Intel GPU); default: cuda for {' and '.join(CUDA_ONLY)}, else cpu"
)


def add_engine_place_args(parser: argparse.ArgumentParser) -> None:
    """--device, --calibration and --engine-dir: where an engine runs and what it is built from, as
    every command that loads one (eval, export, run, serve) takes them for rtseg.engine.load."""
    parser.add_argument("--device", default=None, help=DEVICE_HELP)
    parser.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="int8: calibration list written by `rtseg calibrate` "
        "(default: the one int8 build in the engine cache)",
    )
    parser.add_argument(
        "--engine-dir",
        type=Path,
        default=None,
        help="engine cache (default: $RTSEG_ENGINE_DIR, the checkout's engines/ or ~/.cache/rtseg/engines)",
    )


def engine_place(args: argparse.Namespace) -> dict[str, Any]:
    """The options ``add_engine_place_args`` parsed, as rtseg.engine.load takes them; --calibration
    without --precision int8 is refused in those terms (the backends name calibration= and the
    precision, not the flags), and so is a precision the backend does not run (before the model
    loads: run and serve found out after it)."""
    spec = BACKEND_SPECS.get(args.backend)  # None for auto, which picks among those that run it
    allowed = ALL_PRECISIONS if spec is None else spec.precisions
    if args.precision not in allowed:
        runs = "" if spec is None else f" (--backend {args.backend} runs those)"
        raise ConfigError(f"--precision must be one of {', '.join(allowed)}{runs}, got {args.precision!r}")
    if args.calibration is not None and args.precision != "int8":
        raise ConfigError(
            f"--calibration applies to int8 engines (--precision int8), not --precision {args.precision}"
        )
    return {"device": args.device, "calibration": args.calibration, "engine_dir": args.engine_dir}


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        choices=list_models(),
        default=None,
        help=f"architecture (default: {DEFAULT_MODEL} with rtseg's shipped CamVid weights)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="checkpoint: rtseg's format or an upstream state dict rtseg recognises",
    )
