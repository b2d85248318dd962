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
    closer = threading.Thread(target=src.close)
    closer.start()
    consumer.join(1.0)
    alive = consumer.is_alive()
    cap.unblock.set()
    closer.join(5)
    consumer.join(5)
    assert not alive, "the consumer kept waiting after close()"
    assert len(outcome) == 1 and isinstance(outcome[0], StopIteration)


class StalledRead:
    """Delivers frames until ``stall`` is set; the read in progress then blocks for ``seconds`` (a
    stream frozen with the connection open). Records a read after release and a release under a
    read (FFmpeg aborts the process for that)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.stall = threading.Event()
        self.in_read = threading.Event()
        self.released = threading.Event()
        self.misuse: list[str] = []

    def isOpened(self) -> bool:
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.released.is_set():
            self.misuse.append("read after release")
        self.in_read.set()
        try:
            if self.stall.is_set():
                time.sleep(self.seconds)
                return False, None
            time.sleep(0.002)
            return True, np.zeros((8, 8, 3), np.uint8)
        finally:
            self.in_read.clear()

    def release(self) -> None:
        if self.in_read.is_set():
            self.misuse.append("release during a read")
        self.released.set()


def test_close_does_not_wait_out_a_read_blocked_on_a_stalled_stream() -> None:
    # close() joined the capture thread for up to `timeout`: Ctrl-C on `rtseg run` during a stall
    # took 9.4 s to write the summary with --timeout 10.
    cap = StalledRead(seconds=2.0)
    src = open_source("rtsp://127.0.0.1:1/x", capture_factory=lambda: cap, timeout=10.0)
    next(src)
    thread = src._thread
    cap.stall.set()
    time.sleep(0.1)  # the read now in progress blocks
    start = time.perf_counter()
    src.close()
    took = time.perf_counter() - start
    assert took < 1.0
    assert cap.released.wait(4.0)  # by the capture thread, once its read returned
    thread.join(2.0)
    assert not thread.is_alive()
    assert cap.misuse == []
    assert src.stats.reconnects == 0


def test_close_does_not_wait_out_a_reopen_and_the_capture_it_opens_is_released() -> None:
    first = StalledRead(seconds=0.0)
    second = StalledRead(seconds=0.0)
    opens: list[StalledRead] = []

    def factory() -> StalledRead:
        opens.append(second if opens else first)
        if len(opens) > 1:
            time.sleep(1.5)  # FFmpeg's open, waiting on a server slow to answer
        return opens[-1]

    src = open_source("rtsp://127.0.0.1:1/x", capture_factory=factory, timeout=10.0, backoff=0.01)
    next(src)
    thread = src._thread
    first.stall.set()  # reads now fail: the capture thread reopens
    deadline = time.monotonic() + 2
    while len(opens) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.perf_counter()
    src.close()
    assert time.perf_counter() - start < 1.0
    assert second.released.wait(3.0)
    thread.join(2.0)
    assert not thread.is_alive()
    assert first.misuse == second.misuse == []
    assert src.stats.reconnects == 0  # closed while it opened: not counted, nothing read from it
