"""Paths checked before they are used: output files before the slow work that fills them (a run,
an evaluation or a training that cannot write its result is refused before it starts, not after
minutes of work), and file names before OpenCV is given them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ConfigError, RtsegError


def check_output(path: Path | None, option: str) -> None:
    """Refuse an output file that cannot be written before the slow part, not after it: a folder,
    a path under a file, or a folder no file can be made in. That is tried, with a temporary file:
    permissions say nothing of a read-only mount or /proc, nor anything to root. ``option`` names
    the output in the error (a command's flag, or a function's parameter)."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder: give the name of a file to write")
    folder = next(p for p in path.absolute().parents if p.exists())
    if not folder.is_dir():
        raise ConfigError(f"{option} {path}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write in {folder}: {exc.strerror or exc}") from None


def opencv_path(
    path: str | os.PathLike[str], error: type[RtsegError], fix: str = "rename it to a UTF-8 name"
) -> str:
    """``path`` as the str to give OpenCV, whose bytes in UTF-8 are those of the name on disk;
    ``error`` (naming the path, and ``fix``) when the name is not valid UTF-8.

    OpenCV's Python binding encodes a str in UTF-8 without checking, and a name that is not valid
    UTF-8 (Python holds its bytes as lone surrogates: b'caf\\xe9' is 'caf\\udce9') crashed the
    process with SIGSEGV in cv2.VideoCapture, VideoWriter, imread or imwrite. Going through the
    name's bytes also opens a UTF-8 name that an ASCII locale (LC_ALL=C without UTF-8 mode)
    decoded to surrogates. The message shows the bad bytes escaped, so it prints in any locale."""
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        shown = raw.decode("utf-8", "backslashreplace")
        sep = os.fsencode(os.sep)
        start = raw.rfind(sep, 0, exc.start) + 1
        end = raw.find(sep, exc.start)
        part = raw[start : None if end < 0 else end].decode("utf-8", "backslashreplace")
        byte = raw[exc.start]
        raise error(
            f"{shown}: the name '{part}' is not valid UTF-8 (byte 0x{byte:02x}), and OpenCV opens files "
            f"by UTF-8 names only; {fix}"
        ) from None
