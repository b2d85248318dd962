"""Live sources without hardware: captures are fakes injected through ``capture_factory``."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from rtseg.errors import SourceError
from rtseg.source import open_source


class FakeCamera:
    """Delivers ``frames`` frames (pixel value = a global counter), then fails like an unplugged camera."""

    def __init__(
        self, counter: list[int], frames: int | None, period: float = 0.002, opened: bool = True
    ) -> None:
        self.counter = counter
        self.left = frames
        self.period = period
        self.opened = opened
        self.released = threading.Event()

    def isOpened(self) -> bool:
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(self.period)
        if self.left is not None:
            if self.left <= 0:
                return False, None
            self.left -= 1
        self.counter[0] += 1
        return True, np.full((8, 8, 3), self.counter[0] % 256, np.uint8)

    def release(self) -> None:
        self.released.set()


class Factory:
    """Hands out prepared captures in order, then unopened ones."""

    def __init__(self, captures: list[FakeCamera]) -> None:
        self.captures = captures
        self.calls = 0

    def __call__(self) -> FakeCamera:
        self.calls += 1
        if self.captures:
            return self.captures.pop(0)
        return FakeCamera([0], 0, opened=False)


def test_disconnect_recovers_with_backoff_and_is_reported(caplog) -> None:
    counter = [0]
    first = FakeCamera(counter, frames=5)
    factory = Factory([first, FakeCamera(counter, 0, opened=False), FakeCamera(counter, frames=None)])
    with (
        caplog.at_level(logging.WARNING, logger="rtseg.source.live"),
        open_source("camera://0", capture_factory=factory, reconnect=3, backoff=0.02) as src,
    ):
        assert src.info.live and src.info.kind == "camera"
        frames = [f for _, f in zip(range(12), src, strict=False)]
        stats = src.stats
    assert stats.reconnects == 1
    assert factory.calls == 3  # first open, one failed reopen, one good reopen
    assert first.released.is_set()
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices))  # fresh frames only, in capture order
    assert "reconnecting" in caplog.text and "reconnected" in caplog.text


def test_gives_up_after_the_limit_with_a_source_error() -> None:
    factory = Factory([FakeCamera([0], frames=3)])
    start = time.perf_counter()
    with (
        open_source("camera://1", capture_factory=factory, reconnect=2, backoff=0.01) as src,
        pytest.raises(SourceError, match="2 reconnect attempt"),
    ):
        for _ in src:
            pass
    assert time.perf_counter() - start < 2.0
    assert factory.calls == 3


def test_slow_consumer_gets_the_newest_frame_not_a_backlog() -> None:
    counter = [0]
    factory = Factory([FakeCamera(counter, frames=None, period=0.002)])
    with open_source("camera://0", capture_factory=factory) as src:
        staleness = []
        for _, frame in zip(range(6), src, strict=False):
            staleness.append(counter[0] - (int(frame.image[0, 0, 0])))
            time.sleep(0.05)  # a consumer 25x slower than the camera
        stats = src.stats
    assert stats.dropped > 50  # ~25 frames captured per frame consumed were never delivered
    # At the moment it is handed over, a frame is at most a few captures old (mod 256 wrap aside).
    assert all(s % 256 <= 3 for s in staleness)


def test_no_frame_within_timeout_is_an_error() -> None:
    class Stalled(FakeCamera):
        def read(self):
            self.released.wait(1.0)
            return False, None

    factory = Factory([Stalled([0], None)])
    start = time.perf_counter()
    with (
        open_source("camera://0", capture_factory=factory, timeout=0.3, reconnect=0) as src,
        pytest.raises(SourceError, match=r"no frame for 0\.3 s"),
    ):
        next(src)
    assert time.perf_counter() - start < 2.5


def test_failed_first_open_is_immediate_and_clear() -> None:
    with pytest.raises(SourceError, match="cannot open camera://7") as err:
        open_source("camera://7", capture_factory=Factory([]))
    assert "camera 7 connected" in str(err.value)


def test_close_stops_the_capture_thread() -> None:
    cam = FakeCamera([0], frames=None)
    src = open_source("camera://0", capture_factory=Factory([cam]))
    next(src)
    src.close()
    assert cam.released.wait(1.0)
    assert list(src) == []
