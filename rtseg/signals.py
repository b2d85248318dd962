"""Taking over SIGINT and SIGTERM for a command, as a well-behaved Unix program does."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers

__all__ = ["Handler", "restore", "take"]


def take(signum: int, handler: Callable[[int, FrameType | None], object]) -> Handler | None:
    """Install ``handler`` for ``signum``; return the handler to put back, or None where nothing was
    installed. Signals reach the main thread only. A signal the parent set to ignored stays ignored:
    a script's background job (``rtseg run ... &``) starts with SIGINT ignored because the Ctrl-C
    typed for the script's foreground command reaches it too, and catching it anyway stopped the
    background run."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signum) == signal.SIG_IGN:
        return None
    previous = signal.signal(signum, handler)
    return signal.SIG_DFL if previous is None else previous  # None: set outside Python


def restore(signum: int, previous: Handler | None) -> None:
    """Put back what ``take`` replaced; nothing when it installed nothing."""
    if previous is not None:
        signal.signal(signum, previous)
