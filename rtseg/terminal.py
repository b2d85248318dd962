"""Whether stderr is someone's terminal, and progress bars drawn only there.

Library code (evaluation, the sequence study, bench, training) draws bars too, so this lives
outside the CLI package. A bar redrawn into a file or a journal keeps every redraw: megabytes an
hour for a training service.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def stderr_is_tty() -> bool:
    """Whether sys.stderr is an interactive terminal, the one place to ask before drawing a status
    line or a progress bar: False when it is a file or a pipe (a log would keep every redraw) and
    when there is none (None after ``2>&-``, or closed), where asking it would raise."""
    stream = sys.stderr
    if stream is None:
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


def progress_bar(iterable: Iterable[T] | None = None, *, progress: bool = True, **options: Any) -> tqdm:
    """``tqdm(iterable, **options)`` on stderr (no iterable: updated by hand), drawn when
    ``progress`` and stderr is a terminal."""
    return tqdm(iterable, disable=not (progress and stderr_is_tty()), file=sys.stderr, **options)
