from __future__ import annotations

import concurrent.futures as futures
import threading
import time

import numpy as np
import pytest

from rtseg.schedule import AsyncAdaptive, FlowWarp


def _settle(s: AsyncAdaptive) -> None:
    """Wait until the worker's job has completed (its deep stage returning is not yet the end:
    a fixed sleep made the next step miss the result now and then on a busy machine)."""
    pending = s._pending
    if pending is not None:
        futures.wait([pending], timeout=10.0)


class GatedDeep:
    """The engine with a deep stage that waits for the test to open a gate (to watch the worker)."""

    def __init__(self, engine, *, open_gate: bool = False) -> None:
        self._engine = engine
        self.gate = threading.Event()
        self.finished = threading.Event()
        if open_gate:
            self.gate.set()

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def run_deep(self, low):
        if threading.current_thread() is not threading.main_thread():
            self.gate.wait(10.0)
        out = self._engine.run_deep(low)
        self.finished.set()
        return out


def test_frames_never_wait_for_deep(engine, drive) -> None:
    gated = GatedDeep(engine)
    a, b, c = drive[0], 255 - drive[0], drive[8]
    s = AsyncAdaptive(0.05, max_interval=100)
    try:
        r0 = s.step(gated, a)  # first frame: no cache to answer from, deep runs inline
        assert r0.is_keyframe and r0.deep_age == 0 and "deep" in r0.timings
        gated.finished.clear()
        r1 = s.step(gated, a)
        assert not r1.is_keyframe and r1.deep_age == 1
        r2 = s.step(gated, b)  # a cut: deep for b starts on the worker; b is answered from a's cache
        r3 = s.step(gated, c)  # another change while the worker is busy: deferred, not started
        assert not gated.finished.is_set()  # both answered while deep was still blocked
        assert r2.is_keyframe and r2.deep_age == 2 and "deep" not in r2.timings
        assert not r3.is_keyframe and r3.deep_age == 3 and s.stats.deferred == 1
        gated.gate.set()
        assert gated.finished.wait(10.0)
        _settle(s)
        r4 = s.step(gated, b)  # the worker finished: b's deep features are used from now on
        assert r4.deep_age == 2  # frame 4 uses frame 2's deep
        expected = engine.run_head(engine.run_low(b), engine.run_deep(engine.run_low(b)))[0]
        assert np.array_equal(r4.labels, expected)
        stats = s.stats
        assert stats.frames == 5 and stats.keyframes == 2 and stats.worker_deep_ms > 0
    finally:
        gated.gate.set()
        s.close()


def test_reset_waits_for_the_worker_and_starts_over(engine, drive) -> None:
    gated = GatedDeep(engine, open_gate=True)
    s = AsyncAdaptive(0.05, max_interval=100)
    try:
        s.step(gated, drive[0])
        s.step(gated, 255 - drive[0])
        s.reset()
        r = s.step(engine, drive[3])
        assert r.is_keyframe and r.deep_age == 0 and r.frame_index == 0
    finally:
        s.close()


def test_async_on_a_sequence_keyframes_and_ages(engine, drive) -> None:
    s = AsyncAdaptive(0.0, max_interval=4)  # threshold 0: every change asks for a keyframe
    try:
        results = [s.step(engine, im) for im in drive]
    finally:
        s.close()
    assert results[0].is_keyframe
    assert all(r.deep_age >= 0 for r in results)
    assert all("deep" not in r.timings for r in results[1:])
    ages_at_keyframes = [r.deep_age for r in results[1:] if r.is_keyframe]
    assert ages_at_keyframes and all(a >= 1 for a in ages_at_keyframes)


def test_usable_again_after_close(engine, drive) -> None:
    s = AsyncAdaptive(0.0, max_interval=2)
    for im in drive[:3]:
        s.step(engine, im)
    s.close()
    s.reset()
    results = [s.step(engine, im) for im in drive[:4]]  # a new worker starts when needed
    s.close()
    assert results[0].is_keyframe and sum(r.is_keyframe for r in results) >= 2


class DeepFailure(RuntimeError):
    pass


class FailingDeep:
    """The engine with a deep stage that fails on the worker thread (inline first frames succeed)."""

    def __init__(self, engine, error: type[Exception] = RuntimeError) -> None:
        self._engine = engine
        self.error = error
        self.failed = threading.Event()

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def run_deep(self, low):
        if threading.current_thread() is not threading.main_thread():
            self.failed.set()
            raise self.error("deep stage blew up")
        return self._engine.run_deep(low)


def _new_workers(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.name.startswith("rtseg-deep")]


def _fail_one_keyframe(s: AsyncAdaptive, failing: FailingDeep, drive) -> None:
    s.step(failing, drive[0])
    r = s.step(failing, 255 - drive[0])  # a cut: deep starts on the worker, which fails
    assert r.is_keyframe
    assert failing.failed.wait(10.0)
    _settle(s)


def test_a_worker_failure_is_raised_once_with_context_and_a_new_keyframe_follows(engine, drive) -> None:
    """The worker's exception was re-raised on every later frame (the failed job was never cleared),
    without saying which keyframe's deep run it came from, and the stream could not go on."""
    failing = FailingDeep(engine)
    s = AsyncAdaptive(0.05, max_interval=100)
    try:
        _fail_one_keyframe(s, failing, drive)
        with pytest.raises(RuntimeError, match="deep stage blew up") as info:
            s.step(failing, 255 - drive[0])
        assert any("keyframe 1" in note and "worker" in note for note in info.value.__notes__)
        # The stream goes on: the failed keyframe is retried on the next frame (on the worker again,
        # so this frame is answered from frame 0's cache, which is still valid).
        r = s.step(engine, 255 - drive[0])
        assert r.is_keyframe and r.deep_age == 2  # the frame that raised is not counted
        assert s.stats.frames == 3 and s.stats.keyframes == 3
    finally:
        s.close()


def test_a_worker_failure_is_raised_with_its_context_on_python_3_10(engine, drive, python310) -> None:
    """exc.add_note() does not exist before 3.11: the worker's error surfaced as an AttributeError."""
    python310(DeepFailure)
    failing = FailingDeep(engine, DeepFailure)
    s = AsyncAdaptive(0.05, max_interval=100)
    try:
        _fail_one_keyframe(s, failing, drive)
        with pytest.raises(DeepFailure, match="deep stage blew up") as info:
            s.step(failing, 255 - drive[0])
        assert any("keyframe 1" in note and "worker" in note for note in info.value.__notes__)
    finally:
        s.close()


def test_a_worker_failure_not_yet_collected_is_raised_by_close(engine, drive) -> None:
    """close() waited for the failed job and dropped its exception: the error was lost."""
    before = set(threading.enumerate())
    failing = FailingDeep(engine)
    s = AsyncAdaptive(0.05, max_interval=100)
    _fail_one_keyframe(s, failing, drive)
    with pytest.raises(RuntimeError, match="deep stage blew up"):
        s.close()
    assert not _new_workers(before)  # the worker thread ended
    s.close()  # the error was reported once; closing again is quiet


def test_a_worker_failure_not_yet_collected_is_raised_by_reset_once(engine, drive) -> None:
    """reset() (a new Pipeline run) waited for the failed job and dropped its exception."""
    failing = FailingDeep(engine)
    s = AsyncAdaptive(0.05, max_interval=100)
    try:
        _fail_one_keyframe(s, failing, drive)
        with pytest.raises(RuntimeError, match="deep stage blew up") as info:
            s.reset()
        assert any("keyframe 1" in note for note in info.value.__notes__)
        s.reset()  # reported once
        r = s.step(engine, drive[0])  # the new stream starts clean
        assert r.is_keyframe and r.deep_age == 0 and s.stats.frames == 1
    finally:
        s.close()


def test_close_with_a_job_in_flight_waits_and_ends_the_worker(engine, drive) -> None:
    before = set(threading.enumerate())
    gated = GatedDeep(engine)
    s = AsyncAdaptive(0.05, max_interval=100)
    s.step(gated, drive[0])
    assert s.step(gated, 255 - drive[0]).is_keyframe  # the worker is now blocked in deep
    closer = threading.Thread(target=s.close)
    closer.start()
    time.sleep(0.05)
    assert closer.is_alive()  # close waits for the job rather than abandoning the thread
    gated.gate.set()
    closer.join(10.0)
    assert not closer.is_alive() and not _new_workers(before)


def test_a_keyframe_refilled_in_place_keeps_its_own_flow_reference(engine, drive) -> None:
    """The worker finishes frames later: the flow reference it installs must be the keyframe's
    picture, not what the caller's reused buffer holds by then."""
    gated = GatedDeep(engine)
    s = AsyncAdaptive(0.05, max_interval=100, warp=FlowWarp())
    buffer = np.empty_like(drive[0])
    try:
        np.copyto(buffer, drive[0])
        s.step(gated, buffer)
        np.copyto(buffer, 255 - drive[0])
        assert s.step(gated, buffer).is_keyframe  # the cut starts a deep run on the worker
        np.copyto(buffer, drive[8])
        s.step(gated, buffer)  # the caller reuses the buffer while the worker is busy
        gated.gate.set()
        assert gated.finished.wait(10.0)
        _settle(s)
        r = s.step(gated, buffer)  # collects the keyframe: the change is measured against it
        reference = FlowWarp()
        reference.set_keyframe(255 - drive[0])
        assert r.change == pytest.approx(reference.residual(drive[8].copy()))
        assert r.change > 0.05
    finally:
        gated.gate.set()
        s.close()
