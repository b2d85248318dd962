"""What every source shares: closing while another thread reads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from rtseg.errors import SourceError
from rtseg.source import Frame, open_source
from rtseg.source.base import Source, SourceOptions


class _Slow(Source):
    """A read that takes a while, as a decoder's does; records what happened in which order."""

    def __init__(self) -> None:
        super().__init__("slow://", SourceOptions())
        self.events: list[str] = []
        self.reading = threading.Event()

    def _next_frame(self) -> Frame | None:
        self.events.append("read starts")
        self.reading.set()
        time.sleep(0.2)
        self.events.append("read ends")
        return Frame(np.zeros((4, 4, 3), np.uint8), 0, time.time(), time.perf_counter(), self.uri)

    def _release(self) -> None:
        self.events.append("released")


def test_close_from_another_thread_waits_for_the_read_in_progress() -> None:
    # FFmpeg aborted the whole process (an assertion in libavcodec) when a video was released
    # while another thread was decoding from it.
    src = _Slow()
    reader = threading.Thread(target=lambda: next(src))
    reader.start()
    assert src.reading.wait(2)
    src.close()
    reader.join(2)
    assert src.events == ["read starts", "read ends", "released"]
    with pytest.raises(SourceError, match="the source is closed"):
        next(src)


def test_close_wakes_a_live_read_waiting_for_a_frame() -> None:
    class Silent:  # a camera that opened and sends nothing
        def isOpened(self) -> bool:
            return True

        def read(self):
            time.sleep(0.01)
            return False, None

        def release(self) -> None:
            pass

        def get(self, prop: int) -> float:
            return 0.0

    src = open_source("camera://0", capture_factory=Silent, timeout=30, reconnect=1000, backoff=0.01)
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(next(src, "end")))
    reader.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    src.close()
    reader.join(5)
    assert time.monotonic() - t0 < 2 and got == ["end"]  # not the 30 s timeout


def _close_during_second_read(src) -> tuple[float, list[object]]:  # type: ignore[no-untyped-def]
    """Take one frame, start a second read on another thread, close once it has begun: how long
    close() took, and what the second read got."""
    next(src)
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(next(src, "end")))
    reader.start()
    deadline = time.monotonic() + 10
    while not src._reading.locked() and reader.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)  # until the read holds the lock a close() waits for
    assert src._reading.locked(), "the second read never began"
    t0 = time.monotonic()
    src.close()
    took = time.monotonic() - t0
    reader.join(10)
    return took, got


@pytest.mark.parametrize(
    "options",
    [
        {"realtime": True},  # the next frame is due 1/fps = 5 s after the first
        {"realtime": True, "rate": 0.2, "uri": "synthetic://drive?size=64x48&fps=25"},  # 5 s: 1/rate
    ],
)
def test_close_ends_a_realtime_wait_at_once_and_delivers_no_frame(options: dict) -> None:
    # The wait for the next frame's time slept holding the read lock: close() (and a SIGTERM)
    # waited it out, up to 1/rate or 1/fps seconds, and the frame was then delivered.
    uri = options.pop("uri", "synthetic://drive?size=64x48&fps=0.2")
    src = open_source(uri, **options)
    took, got = _close_during_second_read(src)
    assert took < 2 and got == ["end"]


def test_close_ends_a_live_rate_wait_at_once_and_delivers_no_frame() -> None:
    class Camera:  # 100 frames a second
        def isOpened(self) -> bool:
            return True

        def read(self):
            time.sleep(0.01)
            return True, np.zeros((8, 8, 3), np.uint8)

        def release(self) -> None:
            pass

        def get(self, prop: int) -> float:
            return 0.0

    src = open_source("camera://0", capture_factory=Camera, rate=0.2)  # a frame every 5 s
    took, got = _close_during_second_read(src)
    assert took < 2 and got == ["end"]
