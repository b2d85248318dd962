from __future__ import annotations

import time

import numpy as np
import pytest

from rtseg.errors import ConfigError, SourceError
from rtseg.source import base, open_source
from rtseg.source.base import MediaSource, StopFlag


def _frames(uri: str, n: int | None = None) -> list:
    with open_source(uri) as src:
        return [f for _, f in zip(range(n), src, strict=False)] if n else list(src)


def test_size_fps_frames_and_indices() -> None:
    frames = _frames("synthetic://drive?size=320x180&fps=15&seed=1&frames=12")
    assert len(frames) == 12
    assert frames[0].image.shape == (180, 320, 3) and frames[0].image.dtype == np.uint8
    assert [f.index for f in frames] == list(range(12))
    assert frames[3].position_s == pytest.approx(3 / 15)


def test_deterministic_per_seed_and_moving() -> None:
    a = _frames("synthetic://drive?size=256x144&seed=5&frames=6")
    b = _frames("synthetic://drive?size=256x144&seed=5&frames=6")
    c = _frames("synthetic://drive?size=256x144&seed=6&frames=6")
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0].image, c[0].image)
    diffs = [np.abs(a[i + 1].image.astype(int) - a[i].image.astype(int)).mean() for i in range(5)]
    assert min(diffs) > 0.05  # the scene moves every frame


def test_scene_content_is_a_road_under_a_sky() -> None:
    image = _frames("synthetic://drive?size=320x180&frames=1")[0].image
    top = image[:10].reshape(-1, 3).mean(0)
    bottom_centre = image[-10:, 140:180].reshape(-1, 3).mean(0)
    assert top[0] > top[2] + 40  # blue sky (BGR)
    assert abs(bottom_centre[0] - bottom_centre[2]) < 15 and 60 < bottom_centre.mean() < 140  # grey road


def test_endless_by_default_and_loop_with_frames() -> None:
    assert len(_frames("synthetic://drive?size=64x48", 50)) == 50
    with open_source("synthetic://drive?size=64x48&frames=3", loop=True) as src:
        frames = [f for _, f in zip(range(7), src, strict=False)]
    assert [f.index for f in frames] == list(range(7))
    assert np.array_equal(frames[3].image, frames[0].image)
    assert [f.discontinuity for f in frames] == [False, False, False, True, False, False, True]


def test_unknown_scene() -> None:
    with pytest.raises(SourceError, match="unknown synthetic scene 'city'; available: drive"):
        open_source("synthetic://city")


@pytest.mark.parametrize(
    "uri, message",
    [
        ("synthetic://drive?size=10x10", "at least 32x32"),
        ("synthetic://drive?size=big", "size must be WIDTHxHEIGHT"),
        ("synthetic://drive?fps=0", "fps must be a positive finite number"),
        ("synthetic://drive?fps=inf", "fps must be a positive finite number"),
        ("synthetic://drive?frames=x", "frames must be a whole number of frames >= 1, got 'x'"),
        ("synthetic://drive?colour=red", "unknown option"),
    ],
)
def test_bad_parameters(uri: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_source(uri)


def test_rate_keeps_one_timeline_across_loop_passes() -> None:
    """A 0.9 s clip at rate 4: the slots are every 0.25 s of media time running on across passes
    (frames 0, 3, 5, 8, 10, 13, ...); each pass restarted the slot grid, and after the first seam
    frames came 0.2 s apart (10, 12, 14, 17, ...)."""
    with open_source("synthetic://drive?size=64x48&fps=10&frames=9", loop=True, rate=4) as src:
        frames = [f for _, f in zip(range(12), src, strict=False)]
    indices = [f.index for f in frames]
    # Passes start at 9, 18 and 27; 9 and 27 are thinned: the next frame delivered marks the jump.
    assert [f.index for f in frames if f.discontinuity] == [10, 18, 28]
    expected, slot = [], 0.0
    for index in range(30):  # the first frame at or past each 0.25 s slot of the running time
        if index / 10 + 1e-9 >= slot:
            expected.append(index)
            slot = (int(index / 10 * 4 + 1e-9) + 1) / 4
    assert indices == expected[:12]


@pytest.mark.parametrize("rate", [None, 1000.0])
def test_realtime_drops_a_frame_only_when_a_whole_frame_period_late(rate: float | None) -> None:
    """A 5 fps scene, its consumer 0.1 s (half a frame period) behind once: nothing is dropped,
    with or without a rate above the fps. A rate of 1000 made a frame 1 ms late a drop."""
    with open_source("synthetic://drive?size=64x48&fps=5", realtime=True, rate=rate) as src:
        frames = [next(src)]
        time.sleep(0.3)  # frame 1 is due 0.2 s after frame 0: read 0.1 s late
        frames += [next(src), next(src)]
        dropped = src.stats.dropped
    assert [f.index for f in frames] == [0, 1, 2] and dropped == 0


class _Clock:
    """A fake ``time`` for rtseg.source.base: perf_counter and time() stand still until a test or
    a realtime wait moves them on, so pacing is judged the same on a busy machine."""

    WALL = 1.7e9  # time.time() at perf_counter 0

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return self.WALL + self.now


class _ClockedStop(StopFlag):
    """A realtime source's stop flag whose waits pass on the fake clock at once."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock

    def wait(self, timeout: float | None = None) -> bool:
        self.clock.now += timeout or 0.0
        return self.is_set()


@pytest.fixture
def clocked(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """``clocked(uri, **options)``: a source read by the fake clock, and that clock."""
    clock = _Clock()
    monkeypatch.setattr(base, "time", clock)

    def open_clocked(uri: str, **options: object) -> tuple[MediaSource, _Clock]:
        src = open_source(uri, **options)
        src._stop = _ClockedStop(clock)
        return src, clock

    return open_clocked


def test_realtime_frames_are_captured_when_due_however_late_they_are_taken(clocked) -> None:
    """A realtime file emulates a camera: a frame's capture time is when it was due. A late frame
    was stamped when handed over, and its latency left out how late it was (34.5 ms p50 reported,
    52.1 ms from due to result)."""
    src, clock = clocked("synthetic://drive?size=64x48&fps=10", realtime=True)
    with src:
        first = next(src)  # due at once: the clock starts here
        assert first.monotonic == 100.0 and first.timestamp == _Clock.WALL + 100.0
        clock.now += 0.15  # frame 1 was due at 100.1: taken 50 ms late, not dropped
        late = next(src)
        assert late.index == 1 and late.monotonic == pytest.approx(100.1)
        assert late.timestamp == pytest.approx(_Clock.WALL + 100.1)
        on_time = next(src)  # frame 2, due at 100.2: waited for
        assert on_time.monotonic == pytest.approx(100.2) and clock.now == pytest.approx(100.2)
        clock.now += 0.25  # frame 3 (due 100.3) is dropped; frame 4 (100.4) taken 50 ms late
        after_drop = next(src)
        assert after_drop.index == 4 and after_drop.monotonic == pytest.approx(100.4)
        assert src.stats.dropped == 1


def test_frames_read_without_realtime_are_captured_when_handed_over(clocked) -> None:
    src, clock = clocked("synthetic://drive?size=64x48&fps=10")
    with src:
        next(src)
        clock.now += 1.0
        frame = next(src)
    assert frame.monotonic == 101.0 and frame.timestamp == _Clock.WALL + 101.0


@pytest.mark.parametrize("work_s", [0.03, 0.1, 0.25])
def test_realtime_drops_only_frames_the_rate_keeps(clocked, work_s: float) -> None:
    """3 s of a 30 fps scene at rate 20 behind a slow consumer: a frame dropped as late left its
    rate slot open, so every frame after it counted as a drop while the consumer caught up, those
    the rate thins too (38 delivered + 38 dropped of the 60 the rate allows), and the frame it
    caught up on could be one the rate thins."""
    expected, slot = [], 0.0
    for index in range(90):  # the first frame at or past each 0.05 s slot: what rate 20 keeps
        if index / 30 + 1e-9 >= slot:
            expected.append(index)
            slot = (int(index / 30 * 20 + 1e-9) + 1) / 20
    src, clock = clocked("synthetic://drive?size=64x48&fps=30&frames=90", realtime=True, rate=20)
    with src:
        delivered = []
        for frame in src:
            delivered.append(frame.index)
            clock.now += work_s
        dropped = src.stats.dropped
    assert len(expected) == 60 and set(delivered) <= set(expected)
    assert len(delivered) + dropped == 60
    assert dropped > 0 or work_s < 0.05
