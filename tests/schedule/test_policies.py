from __future__ import annotations

import concurrent.futures as futures
import re

import cv2
import numpy as np
import pytest

from rtseg.errors import ConfigError
from rtseg.schedule import (
    Adaptive,
    AsyncAdaptive,
    ChangeMeasure,
    Clockwork,
    Every,
    FlowWarp,
    make_scheduler,
)
from rtseg.schedule.policies import DEFAULT_THRESHOLD


def _run(scheduler, engine, images):
    scheduler.reset()
    return [scheduler.step(engine, im) for im in images]


def test_every_matches_the_full_model(engine, drive) -> None:
    results = _run(Every(), engine, drive[:4])
    assert all(r.is_keyframe and r.deep_age == 0 for r in results)
    for r, image in zip(results, drive, strict=False):
        assert np.array_equal(r.labels, engine.run(image)[0])
        assert r.labels.shape == (48, 64) and r.labels.dtype == np.uint8
        assert set(r.timings) == {"low", "deep", "head"} and r.latency_ms > 0
    assert [r.frame_index for r in results] == [0, 1, 2, 3]


def test_clockwork_reuses_the_keyframe_deep_features_exactly(engine, drive) -> None:
    results = _run(Clockwork(3), engine, drive[:7])
    assert [r.is_keyframe for r in results] == [True, False, False, True, False, False, True]
    assert [r.deep_age for r in results] == [0, 1, 2, 0, 1, 2, 0]
    assert "deep" not in results[1].timings
    # A reused frame is exactly head(low of this frame, deep of its keyframe).
    deep = engine.run_deep(engine.run_low(drive[3]))
    expected = engine.run_head(engine.run_low(drive[5]), deep)[0]
    assert np.array_equal(results[5].labels, expected)


def test_adaptive_keyframes_on_change_and_max_interval(engine, drive) -> None:
    still = [drive[0]] * 7
    results = _run(Adaptive(0.05, max_interval=3), engine, still)
    assert [r.is_keyframe for r in results] == [True, False, False, True, False, False, True]
    assert results[0].change is None and results[1].change == 0.0
    # A cut to a different picture is a keyframe at once.
    cut = [drive[0], drive[0], 255 - drive[0], 255 - drive[0]]
    results = _run(Adaptive(0.05, max_interval=10), engine, cut)
    assert [r.is_keyframe for r in results] == [True, False, True, False]
    assert results[2].change > 0.05 and "change" in results[2].timings


def test_flow_residual_ignores_motion_the_warp_explains(engine) -> None:
    rng = np.random.default_rng(3)
    canvas = cv2.GaussianBlur(rng.integers(0, 255, (48, 96), dtype=np.uint8), (0, 0), 2.0)
    canvas = cv2.normalize(canvas, None, 0, 255, cv2.NORM_MINMAX)
    frames = [np.dstack([canvas[:, 16 - i : 80 - i]] * 3) for i in range(5)]  # a steady 1 px/frame pan
    cut = np.dstack([255 - canvas[:, 16:80]] * 3)
    features = _run(Adaptive(0.05, max_interval=50, warp=None), engine, frames)
    flow = _run(Adaptive(0.05, max_interval=50, warp=FlowWarp(stride=1)), engine, [*frames, cut])
    assert sum(r.is_keyframe for r in features) > 1  # every panned frame looks like change
    assert [r.is_keyframe for r in flow] == [True, False, False, False, False, True]  # only the cut
    assert all(r.change < 0.05 for r in flow[1:5]) and flow[5].change > 0.05
    assert "warp" in flow[1].timings


def test_a_keyframe_the_maximum_interval_forces_computes_no_flow(engine, drive, monkeypatch) -> None:
    """The flow decides nothing there and no warp follows: 3 ms a forced keyframe at 1024x512."""
    calls: list[int] = []
    original = FlowWarp.residual

    def counted(self, image):
        calls.append(1)
        return original(self, image)

    monkeypatch.setattr(FlowWarp, "residual", counted)
    still = [drive[0]] * 7  # no change: keyframes at 0, 3 and 6 are the maximum interval's
    scheduler = Adaptive(0.05, max_interval=3, warp=FlowWarp())
    results = _run(scheduler, engine, still)
    assert [r.is_keyframe for r in results] == [True, False, False, True, False, False, True]
    assert len(calls) == 4  # frames 1, 2, 4 and 5
    assert results[3].change is None and results[4].change is not None
    # The frame after a forced keyframe is scored (and warped) against that keyframe.
    assert results[4].deep_age == 1 and np.array_equal(results[4].labels, results[1].labels)


def test_adaptive_threshold_orders_the_keyframe_count(engine, drive) -> None:
    counts = [
        sum(r.is_keyframe for r in _run(Adaptive(t, max_interval=16), engine, drive[:8]))
        for t in (0.0, 0.02, 1e9)
    ]
    assert counts[0] == 8
    assert counts[0] >= counts[1] >= counts[2] == 1


def test_target_keyframe_rate_calibrates_the_threshold(engine, drive) -> None:
    frames = drive * 2
    s = Adaptive(target_keyframe_rate=0.5, max_interval=8, calibration_frames=8)
    assert s.threshold is None
    results = _run(s, engine, frames)
    assert [r.is_keyframe for r in results[:8]] == [True, False] * 4  # clockwork at the target rate
    assert s.threshold is not None and s.threshold > 0
    later = sum(r.is_keyframe for r in results[8:]) / len(results[8:])
    assert 0.2 <= later <= 0.8
    s.reset()
    assert s.threshold is None  # recalibrates for the next stream


@pytest.mark.parametrize("warp", [True, False], ids=["flow", "features"])
def test_calibration_scores_each_frame_as_it_comes(engine, drive, warp: bool, monkeypatch) -> None:
    # All ~225 pairs were scored on the last calibration frame: one frame stalled 0.4-2 s.
    s = make_scheduler("adaptive", target_keyframe_rate=0.5, max_interval=8, warp=warp)
    s.calibration_frames = 8
    calls: list[int] = []
    real = s._distance
    monkeypatch.setattr(s, "_distance", lambda a, b: calls.append(len(s._recorded)) or real(a, b))
    results = _run(s, engine, drive[:8])
    per_frame = [calls.count(n) for n in range(1, 9)]
    assert per_frame == [0, 1, 2, 3, 4, 5, 6, 7]  # frame t against the t before it (max_interval 8)
    assert s.threshold is not None and len(results) == 8


@pytest.mark.parametrize("warp", [True, False], ids=["flow", "features"])
def test_a_still_opening_falls_back_to_the_default_threshold(engine, drive, warp: bool, caplog) -> None:
    # Every score 0: the only candidate, 0, made every later frame a keyframe (ratio 1.0).
    s = make_scheduler("adaptive", target_keyframe_rate=0.25, max_interval=8, warp=warp)
    s.calibration_frames = 8
    with caplog.at_level("WARNING"):
        results = _run(s, engine, [drive[0]] * 8 + drive[1:9])
    assert s.threshold == DEFAULT_THRESHOLD[s.change] and "did not change" in caplog.text
    assert sum(r.is_keyframe for r in results[8:]) < 8


def test_make_scheduler_validates() -> None:
    assert isinstance(make_scheduler("async", threshold=0.2), AsyncAdaptive)
    assert make_scheduler("clockwork", interval=5).interval == 5
    default = make_scheduler("adaptive")
    assert default.warp is not None and default.change == "flow" and default.threshold == 0.06
    plain = make_scheduler("adaptive", warp=False)
    assert plain.warp is None and plain.change == "features" and plain.threshold == 0.12
    assert make_scheduler("every").warp is None
    assert make_scheduler("clockwork").warp is not None
    with pytest.raises(ConfigError, match=r"change='flow' .*needs the flow warp: pass warp=FlowWarp\(\)"):
        Adaptive(change="flow")
    with pytest.raises(ConfigError, match=r"measure \(a ChangeMeasure of low features\) does not apply to"):
        Adaptive(measure=ChangeMeasure(pool=2), warp=FlowWarp())
    with pytest.raises(ConfigError, match="unknown scheduler"):
        make_scheduler("sometimes")
    with pytest.raises(ConfigError, match="interval applies to the clockwork"):
        make_scheduler("adaptive", interval=3)
    with pytest.raises(ConfigError, match="threshold applies only to the adaptive"):
        make_scheduler("clockwork", threshold=0.1)
    with pytest.raises(ConfigError, match=r"^change='flow', threshold apply only to the adaptive and async"):
        make_scheduler("every", threshold=0.1, change="flow")
    with pytest.raises(ConfigError, match="flow warp"):
        make_scheduler("every", warp=True)
    assert make_scheduler("adaptive", flow_stride=8).warp.stride == 8
    assert make_scheduler("clockwork").warp.stride == 4
    assert make_scheduler("clockwork").describe() == "clockwork interval 4 + flow warp"
    assert make_scheduler("adaptive", flow_stride=8).describe().endswith(" + flow warp (flow stride 8)")
    assert FlowWarp(stride=2, preset="medium").describe() == "flow warp (flow stride 2, DIS medium)"
    for name, warp in (("every", None), ("clockwork", False)):
        with pytest.raises(ConfigError, match=f"flow_stride applies to the flow warp, which '{name}'"):
            make_scheduler(name, warp=warp, flow_stride=8)
    with pytest.raises(ConfigError, match="flow_stride must be a whole number >= 1, got 0"):
        make_scheduler("adaptive", flow_stride=0)
    with pytest.raises(ConfigError, match="either threshold or target_keyframe_rate, not both"):
        Adaptive(0.1, target_keyframe_rate=0.3)
    with pytest.raises(ConfigError, match="interval must be >= 1"):
        Clockwork(0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # 2.5 frames silently meant 3, NaN or inf meant "never again" after the first keyframe
        ({"name": "clockwork", "interval": 2.5}, r"clockwork interval must be a whole number .* got 2.5"),
        ({"name": "clockwork", "interval": float("nan")}, r"clockwork interval .* got nan"),
        ({"name": "clockwork", "interval": True}, r"clockwork interval .* got True"),
        ({"name": "adaptive", "max_interval": float("inf")}, r"max_interval .* got inf"),
        ({"name": "async", "max_interval": 2.5}, r"max_interval must be a whole number .* got 2.5"),
        # NaN compares false with every score: no keyframe on change, ever
        ({"name": "adaptive", "threshold": float("nan")}, r"threshold must be a number >= 0, got nan"),
        ({"name": "async", "threshold": "0.1"}, r"adaptive threshold must be a number >= 0, got '0.1'"),
        ({"name": "adaptive", "target_keyframe_rate": "0.5"}, r"target_keyframe_rate must .* got '0.5'"),
        # calibrated to 1/max_interval = 0.1 without a word: twice the deep budget asked for
        (
            {"name": "async", "target_keyframe_rate": 0.05},
            r"target_keyframe_rate 0.05 is below 1/max_interval \(0.1\).*max_interval >= 20",
        ),
        ({"name": "adaptive", "target_keyframe_rate": 0.3, "max_interval": 3}, r"below 1/max_interval"),
        # a "false" from a config file was true: the warp ran
        ({"name": "clockwork", "warp": "no"}, r"warp must be True, False or None .* got 'no'"),
        ({"name": "adaptive", "warp": 1}, r"warp must be True, False or None .* got 1"),
    ],
)
def test_counts_and_thresholds_must_be_real_values(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_scheduler(**options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # "the flow change score needs the flow warp (warp=FlowWarp(), --warp)": make_scheduler's
        # warp is a bool, and the fix (or change='features') went unsaid
        (
            {"name": "adaptive", "warp": False, "change": "flow"},
            "change='flow' (the flow residual) needs the flow warp, which warp=False turns off: "
            "leave the warp on, or use change='features'",
        ),
        # "a feature ChangeMeasure does not apply to the flow change score" named no keyword
        (
            {"name": "adaptive", "change_pool": 2},
            "change_pool applies to the low-feature change score, not to change='flow' (the flow "
            "residual, the default with the warp): use change='features', or warp=False",
        ),
        (
            {"name": "async", "change": "flow", "change_feature": "l1_cat", "change_pool": 2},
            "change_feature, change_pool apply to the low-feature change score, not to change='flow'",
        ),
        ({"name": "every", "warp": True}, "warp=True (the flow warp) needs cached deep features"),
    ],
)
def test_errors_name_make_schedulers_keywords(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_scheduler(**options)
    # The feature score takes them: with change='features' or without the warp.
    make_scheduler("adaptive", change="features", change_pool=2)
    make_scheduler("adaptive", warp=False, change_pool=2)


def test_whole_numbers_of_any_integer_type_are_fine() -> None:
    assert make_scheduler("clockwork", interval=np.int64(3)).interval == 3
    assert make_scheduler("adaptive", threshold=np.float32(0.1), max_interval=np.int32(5)).max_interval == 5
    assert make_scheduler("adaptive", threshold=0).threshold == 0
    assert make_scheduler("adaptive", target_keyframe_rate=0.1).max_interval == 10  # exactly 1/10: fine
    assert make_scheduler("clockwork", warp=np.bool_(False)).warp is None
    with pytest.raises(ConfigError, match="calibration_frames must be a whole number"):
        Adaptive(target_keyframe_rate=0.2, calibration_frames=30.0)


def test_a_change_feature_the_engine_lacks_is_refused_at_set_up(engine) -> None:
    bad = make_scheduler("adaptive", warp=False, change_feature="nope")
    with pytest.raises(
        ConfigError, match=r"change feature 'nope' is not a low feature; choose one of .*l1_cat"
    ):
        bad.check(engine)
    too_coarse = make_scheduler("adaptive", warp=False, change_pool=32)
    with pytest.raises(
        ConfigError, match=r"pooling 32 is larger than the 'l1_cat' feature map \(32x24 at input 64x48\)"
    ):
        too_coarse.check(engine)
    make_scheduler("adaptive", warp=False, change_pool=24).check(engine)  # fits exactly
    make_scheduler("adaptive").check(engine)  # the flow score reads no low feature


@pytest.mark.parametrize("name", ["clockwork", "adaptive", "async"])
def test_a_flow_stride_too_large_for_the_input_is_refused_at_set_up(engine, name: str) -> None:
    """make_scheduler("clockwork", flow_stride=10**9) ran a stretched 12x12 flow image, silently."""
    make_scheduler(name, flow_stride=4).check(engine)  # the default, at the 64x48 test input
    for stride in (5, 10**9):
        with pytest.raises(ConfigError, match=rf"flow_stride {stride} leaves .* at input 64x48.* is 4"):
            make_scheduler(name, flow_stride=stride).check(engine)
    make_scheduler(name, warp=False).check(engine)  # no warp, no flow image


class _NonFiniteLow:
    """The engine with low features that turn NaN or inf after the first frame (an fp16 overflow)."""

    def __init__(self, engine, value: float) -> None:
        self._engine = engine
        self.value = value
        self.calls = 0

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def run_low(self, image):
        low = self._engine.run_low(image)
        self.calls += 1
        if self.calls > 1:
            low = {**low, "l1_cat": low["l1_cat"].clone().fill_(self.value)}
        return low


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_change_score_asks_for_a_keyframe(engine, drive, value: float) -> None:
    """NaN compares false with any threshold: features gone NaN never triggered a keyframe again
    (until max_interval), so the cache was kept exactly when nothing could be said about change."""
    results = _run(Adaptive(0.1, max_interval=100), _NonFiniteLow(engine, value), [drive[0]] * 4)
    assert all(np.isnan(r.change) or np.isinf(r.change) for r in results[1:])
    assert [r.is_keyframe for r in results] == [True, True, True, True]


def test_booleans_are_not_thresholds_or_rates() -> None:
    with pytest.raises(ConfigError, match=r"adaptive threshold must be a number >= 0, got True"):
        Adaptive(True)
    with pytest.raises(ConfigError, match=r"target_keyframe_rate must be in \(0, 1\], got True"):
        Adaptive(target_keyframe_rate=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Clockwork(3, warp=FlowWarp()),
        lambda: Adaptive(0.03, max_interval=10, warp=FlowWarp()),
        lambda: Adaptive(0.03, max_interval=10, warp=None),
    ],
    ids=["clockwork+warp", "adaptive-flow", "adaptive-features"],
)
def test_a_frame_buffer_refilled_in_place_gives_the_results_of_fresh_frames(engine, drive, make) -> None:
    """Camera drivers and ROS bridges refill one array per frame: the flow and the change score
    must be this frame's, not the ones of the frame the same array held before."""
    cut = [*drive[:6], *(255 - im for im in drive[6:12])]
    fresh = _run(make(), engine, [im.copy() for im in cut])
    buffer = np.empty_like(cut[0])
    refilled = []
    scheduler = make()
    for image in cut:
        np.copyto(buffer, image)
        refilled.append(scheduler.step(engine, buffer))
    assert [r.is_keyframe for r in refilled] == [r.is_keyframe for r in fresh]
    assert [r.change for r in refilled] == [r.change for r in fresh]
    for a, b in zip(refilled, fresh, strict=True):
        assert np.array_equal(a.labels, b.labels)


class _QueuedDevice:
    """An engine whose stages return at once and whose work ends when ``synchronize`` is called,
    as a GPU backend's: a stage's timing must count the work, not its queueing."""

    def __init__(self, engine, work_s: float = 0.03) -> None:
        self._engine = engine
        self.work_s = work_s
        self.pending = False

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def run_low(self, image):
        self.pending = True
        return self._engine.run_low(image)

    def run_deep(self, low):
        self.pending = True
        return self._engine.run_deep(low)

    def synchronize(self) -> None:
        if self.pending:
            import time

            time.sleep(self.work_s)
            self.pending = False


@pytest.mark.parametrize("make", [Every, lambda: AsyncAdaptive(0.05)], ids=["every", "async"])
def test_stage_timings_wait_for_the_device(engine, drive, make) -> None:
    device = _QueuedDevice(engine)
    scheduler = make()
    try:
        result = scheduler.step(device, drive[0])  # the first frame runs deep inline, also in async
    finally:
        scheduler.close()
    assert result.timings["low"] >= 25 and result.timings["deep"] >= 25


@pytest.mark.parametrize(
    "make",
    [lambda: Clockwork(4, warp=FlowWarp()), lambda: AsyncAdaptive(1e9, warp=FlowWarp())],
    ids=["clockwork", "async"],
)
def test_the_warp_timing_waits_for_the_device(engine, drive, make) -> None:
    # grid_sample on torch CUDA features returns queued: the warp's time landed in the head's.
    device = _QueuedDevice(engine)
    scheduler = make()
    warp = scheduler.warp.warp

    def queued_warp(deep, image):
        device.pending = True
        return warp(deep, image)

    scheduler.warp.warp = queued_warp
    try:
        scheduler.step(device, drive[0])
        result = scheduler.step(device, drive[1])  # served from the cache, warped
    finally:
        scheduler.close()
    assert not result.is_keyframe and result.timings["warp"] >= 25


class _DeepFailsOnce:
    """The engine with one deep run that raises (an out-of-memory, a lost device)."""

    def __init__(self, engine, fail_at: int) -> None:
        self._engine, self.fail_at, self.calls = engine, fail_at, 0

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def run_deep(self, low):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("deep stage failed")
        return self._engine.run_deep(low)


def test_a_frame_whose_deep_run_failed_is_not_counted(engine, drive) -> None:
    # Frame indices skipped a number after a failure, and stats counted frames that had no result.
    failing = _DeepFailsOnce(engine, fail_at=2)
    s = Clockwork(2, warp=None)
    results = [s.step(failing, drive[0]), s.step(failing, drive[1])]
    with pytest.raises(RuntimeError, match="deep stage failed"):
        s.step(failing, drive[2])
    results += [s.step(failing, drive[2]), s.step(failing, drive[3])]
    assert [r.frame_index for r in results] == [0, 1, 2, 3]
    assert [r.deep_age for r in results] == [0, 1, 0, 1]
    assert s.stats.frames == 4 and s.stats.keyframes == 2


class _HeadFailsOnce:
    """The engine with one head run that raises."""

    def __init__(self, engine, fail_at: int) -> None:
        self._engine, self.fail_at, self.calls = engine, fail_at, 0

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def run_head(self, low, deep):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("head stage failed")
        return self._engine.run_head(low, deep)


def test_an_async_frame_whose_head_failed_is_not_counted(engine, drive) -> None:
    # The async scheduler counted the frame before its head ran: indices skipped a number and the
    # stats held a frame, and a keyframe, that had no result.
    failing = _HeadFailsOnce(engine, fail_at=2)
    s = AsyncAdaptive(0.05, max_interval=100)
    cut = 255 - drive[0]
    try:
        results = [s.step(failing, drive[0])]
        with pytest.raises(RuntimeError, match="head stage failed"):
            s.step(failing, cut)  # a keyframe: its deep run went to the worker before the head failed
        assert s.stats.frames == 1 and s.stats.keyframes == 1
        assert s._pending is not None  # the job in flight is kept, not dropped
        futures.wait([s._pending], timeout=10.0)
        results += [s.step(failing, cut), s.step(failing, cut)]
    finally:
        s.close()
    assert [r.frame_index for r in results] == [0, 1, 2]
    # The retried frame takes the index, and the deep features, of the job started for it: no
    # second deep run, no deferral.
    assert [r.is_keyframe for r in results] == [True, False, False]
    assert [r.deep_age for r in results] == [0, 0, 1]
    expected = engine.run_head(engine.run_low(cut), engine.run_deep(engine.run_low(cut)))[0]
    assert np.array_equal(results[1].labels, expected)
    assert s.stats.frames == 3 and s.stats.keyframes == 1 and s.stats.deferred == 0


def test_an_async_first_frame_whose_deep_run_failed_is_not_counted(engine, drive) -> None:
    failing = _DeepFailsOnce(engine, fail_at=1)  # the first frame's deep stage runs inline
    s = AsyncAdaptive(1e9)
    try:
        with pytest.raises(RuntimeError, match="deep stage failed"):
            s.step(failing, drive[0])
        assert s.stats.frames == 0 and s.stats.keyframes == 0
        results = [s.step(failing, drive[0]), s.step(failing, drive[1])]
    finally:
        s.close()
    assert [r.frame_index for r in results] == [0, 1]
    assert [r.is_keyframe for r in results] == [True, False]
    assert [r.deep_age for r in results] == [0, 1]
    assert s.stats.frames == 2 and s.stats.keyframes == 1


@pytest.mark.parametrize("name", ["clockwork", "async"])
def test_a_refused_index_leaves_the_schedule_as_it_was(engine, drive, name: str) -> None:
    """A NumPy index was refused by SegResult after low, deep and head had run and the cache had
    moved on: the next frame came back as a non-keyframe of age 1, and the failed one counted."""
    from rtseg.errors import InputTypeError
    from rtseg.schedule import make_scheduler

    scheduler = make_scheduler(name, warp=False)
    try:
        with pytest.raises(InputTypeError, match="index must be an int"):
            scheduler.step(engine, drive[0], index=np.int64(0))
        result = scheduler.step(engine, drive[0], index=1)
        assert result.is_keyframe and result.deep_age == 0 and scheduler.stats.keyframes == 1
    finally:
        scheduler.close()
