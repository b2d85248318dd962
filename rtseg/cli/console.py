"""Console output that outlives its reader.

`rtseg run ... | head`, or a log collector that dies under a service, closes the pipe the status
line and the summary go to. Python then raises BrokenPipeError from the next print, which would
end a run whose inference, outputs and --json report have nothing to do with the console. Here the
output to a reader that has gone is dropped, once and for all, and the run carries on.

A console that was never there (``2>&-``, a service started with its descriptors closed) is the
same case from the start: Python sets sys.stderr to None, and the run must not end on it either.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from ..signals import restore, take


class ReaderSafeStream:
    """A text stream whose writes and flushes to a closed pipe are dropped instead of raised."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop_from_now_on()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop_from_now_on()

    def _drop_from_now_on(self) -> None:
        self.reader_gone = True
        # What the stream still buffers would fail again when Python flushes it at exit (and print
        # "Exception ignored ... BrokenPipeError"): its descriptor now writes to /dev/null instead.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def stderr_columns() -> int:
    """The width of stderr's terminal, cheap enough to read at every update (a resized window is
    followed): $COLUMNS, as shutil.get_terminal_size honours it, else stderr's own terminal
    (shutil asks stdout's, a file in ``rtseg run ... > log``), else shutil's answer (80 if none)."""
    with contextlib.suppress(ValueError):
        if (columns := int(os.environ.get("COLUMNS", ""))) > 0:
            return columns
    with contextlib.suppress(AttributeError, ValueError, OSError):
        if (columns := os.get_terminal_size(sys.stderr.fileno()).columns) > 0:
            return columns
    return shutil.get_terminal_size().columns


class StatusLine:
    """One line on an interactive stderr, rewritten in place. Cut to the terminal's width less one:
    a longer line wraps, and each rewrite then leaves the wrapped part behind as a stale line (a
    10-minute run scrolled 1200 rows on 80 columns). A terminal without escapes (TERM=dumb: an
    Emacs shell, some CI consoles) is cleared with spaces instead of ESC[K."""

    def __init__(self) -> None:
        self._plain = os.environ.get("TERM", "") in ("", "dumb")
        self._shown = 0  # the length of the line now shown

    def show(self, text: str) -> None:
        width = max(stderr_columns() - 1, 1)
        text = text[:width]
        if self._plain:  # spaces over what is left of the last line, within the (maybe narrowed) width
            line = f"\r{text}{' ' * (min(self._shown, width) - len(text))}"
        else:
            line = f"\r{text}\x1b[K"
        self._shown = len(text)
        sys.stderr.write(line)
        sys.stderr.flush()

    def end(self) -> None:
        """Leave the line shown (the next output starts below it)."""
        if self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._shown = 0


def _reopen_closed_standard_fds() -> None:
    """/dev/null on descriptors 0-2 that were closed at start (``2>&-``). Left closed, the next
    file opened (an output video, the --json report) would get descriptor 2, and whatever a C++
    library (FFmpeg, TensorRT, torch) writes to "stderr" would go into it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            with contextlib.suppress(OSError):
                null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
                if null != fd:  # the lowest free descriptor is this one, unless 0-2 were reopened meanwhile
                    os.dup2(null, fd)
                    os.close(null)


@contextlib.contextmanager
def reader_safe_console() -> Iterator[None]:
    """sys.stdout and sys.stderr as ReaderSafeStreams for the duration (restored afterwards).
    One that Python set to None (its descriptor was closed at start) writes to /dev/null instead:
    ``print(..., file=sys.stderr)`` with None would print to stdout, and ``sys.stderr.isatty()``
    or a progress bar's write would raise."""
    saved = sys.stdout, sys.stderr
    _reopen_closed_standard_fds()
    opened: list[TextIO] = []
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, ReaderSafeStream):  # entered again (run_reported inside main)
            continue
        if stream is None:
            stream = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
            opened.append(stream)
        setattr(sys, name, ReaderSafeStream(stream))
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        for stream in opened:
            stream.close()


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that whatever is running (an engine load,
    a first pass, a recv waiting for a silent stream) ends at once and outputs are closed. A
    BaseException, as KeyboardInterrupt is: code that skips bad input with ``except Exception``
    must not swallow it."""


@contextlib.contextmanager
def stop_while_starting() -> Iterator[None]:
    """SIGTERM raises Terminated while a command starts: building the parser imports torch and
    every command (seconds), and a stop then killed the process with no word (status 143). The
    command installs its own handlers once it runs."""

    def on_sigterm(signum: int, frame: object) -> None:
        raise Terminated

    previous = take(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        restore(signal.SIGTERM, previous)
