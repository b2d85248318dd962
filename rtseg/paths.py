"""Output files checked before the slow work that fills them: a run, an evaluation or a training
that cannot write its result is refused before it starts, not after minutes of work."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import ConfigError


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
