"""A live source's capture thread must not end silently, and close() must wake a waiting consumer."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from rtseg.errors import SourceError
from rtseg.source import open_source


class BrokenRelease:
    """Delivers two frames, then fails a read; its release() raises (a driver bug)."""

    def __init__(self) -> None:
        self.left = 2

    def isOpened(self) -> bool:
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(0.002)
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.zeros((8, 8, 3), np.uint8)

    def release(self) -> None:
        raise RuntimeError("driver crashed in release")


def test_a_crashed_capture_thread_is_a_source_error_not_an_end_of_stream() -> None:
    src = open_source("camera://0", capture_factory=BrokenRelease, reconnect=2, backoff=0.01, timeout=2.0)
    try:
        with pytest.raises(SourceError, match=r"capture thread failed.*RuntimeError: driver crashed"):
            for _ in range(10):
                next(src)
    finally:
        src.close()


class BlockedRead:
    """Opens, then blocks in read() until released (a stalled driver)."""

    def __init__(self) -> None:
        self.unblock = threading.Event()

    def isOpened(self) -> bool:
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.unblock.wait(10)
        return False, None

    def release(self) -> None:
        self.unblock.set()


def test_close_from_another_thread_ends_a_waiting_consumer_at_once() -> None:
    cap = BlockedRead()
    src = open_source("camera://0", capture_factory=lambda: cap, reconnect=0, timeout=4.0)
    outcome: list[object] = []

    def consume() -> None:
        try:
            outcome.append(next(src))
        except BaseException as exc:
            outcome.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    time.sleep(0.2)
    closer = threading.Thread(target=src.close)  # joins the blocked capture thread for up to timeout
    closer.start()
    consumer.join(1.0)
    alive = consumer.is_alive()
    cap.unblock.set()
    closer.join(5)
    consumer.join(5)
    assert not alive, "the consumer kept waiting after close()"
    assert len(outcome) == 1 and isinstance(outcome[0], StopIteration)
