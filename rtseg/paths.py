"""Paths checked before they are used: output files before the slow work that fills them (a run,
an evaluation or a training that cannot write its result is refused before it starts, not after
minutes of work), file names before OpenCV is given them, and the path a file:// URI names, for
sources and sinks alike."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import unquote

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


def file_uri_path(spec: str, uri: str, error: type[RtsegError]) -> str:
    """The local path a file:// URI names (RFC 8089), ``spec`` being what follows file://: percent
    escapes decoded, an empty or "localhost" host dropped. file://clip.mp4 (relative to the working
    folder) is documented and stays; a first segment that is no local file or folder is another
    host's, and refused with ``error``. One reading for sources and sinks: a sink's own took
    file://localhost/x for ./localhost/x and kept a%20b.mp4 as the name."""
    first, slash, after = spec.partition("/")
    if not first or first.startswith("~"):  # file:///abs/path, or file://~/clip.mp4 (expanded later)
        return unquote(spec)
    if first.lower() == "localhost":
        return unquote(slash + after)
    if slash and not Path(unquote(first)).exists():
        raise error(
            f"{uri!r}: file:// names local files only: the host {unquote(first)!r} is not localhost (nor "
            "a local file or folder); use file:///ABSOLUTE/PATH, file://localhost/ABSOLUTE/PATH or a path"
        )
    return unquote(spec)
