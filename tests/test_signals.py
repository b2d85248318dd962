"""Signals the parent process set to ignored stay ignored; handlers are put back."""

from __future__ import annotations

import signal
import threading

from rtseg.signals import restore, take


def _handler(signum: int, frame: object) -> None:
    raise AssertionError("not to be called")


def test_take_installs_the_handler_and_restore_puts_the_previous_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    previous = take(signal.SIGTERM, _handler)
    try:
        assert signal.getsignal(signal.SIGTERM) is _handler
    finally:
        restore(signal.SIGTERM, previous)
    assert signal.getsignal(signal.SIGTERM) == before


def test_an_ignored_signal_stays_ignored() -> None:
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        previous = take(signal.SIGINT, _handler)
        assert previous is None and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        restore(signal.SIGINT, previous)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_off_the_main_thread_nothing_is_installed() -> None:
    """Only the main thread may set handlers (signal.signal raises ValueError elsewhere)."""
    before = signal.getsignal(signal.SIGTERM)
    taken: list[object] = []
    worker = threading.Thread(target=lambda: taken.append(take(signal.SIGTERM, _handler)))
    worker.start()
    worker.join()
    assert taken == [None] and signal.getsignal(signal.SIGTERM) == before
