"""Console output that outlives its reader.

`rtseg run ... | head`, or a log collector that dies under a service, closes the pipe the status
line and the summary go to. Python then raises BrokenPipeError from the next print, which would
end a run whose inference, outputs and --json report have nothing to do with the console. Here the
output to a reader that has gone is dropped, once and for all, and the run carries on.
"""

from __future__ import annotations

import contextlib
import os
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


@contextlib.contextmanager
def reader_safe_console() -> Iterator[None]:
    """sys.stdout and sys.stderr as ReaderSafeStreams for the duration (restored afterwards)."""
    saved = sys.stdout, sys.stderr
    if sys.stdout is not None:
        sys.stdout = ReaderSafeStream(sys.stdout)  # type: ignore[assignment]
    if sys.stderr is not None:
        sys.stderr = ReaderSafeStream(sys.stderr)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


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
