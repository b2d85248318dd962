"""The adaptive schedule with the deep stage off the frame path (Li, Shi and Lin, CVPR 2018, Sec. 4).

A keyframe's deep stage is handed to a worker thread; that frame and the following ones are
answered with ``head(low_now, previous cache)`` until the worker finishes, and then the new cache
is swapped in. A frame never waits for deep (except the very first, which has no cache yet), so
per-frame latency stays at low + head. ``deep_age`` in each result counts the frames segmented
since the one its deep features were computed from; ``is_keyframe`` marks the frames that started
a deep run. While the worker is busy a new keyframe cannot start: the frame is answered from the
cache and the change is reconsidered on the next frame (counted as ``deferred``). The change
reference differs by score: the feature change compares with the keyframe last started, the flow
residual with the keyframe whose features are cached (its flow serves the warp too), so after a
cut the flow score stays high, and frames count as deferred, until the new features arrive.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..engine.base import Engine, Features
from ..errors import add_note
from ..models.base import StageSpec
from ..result import SegResult, check_count
from .base import ScheduleStats, elapsed_ms, host_image
from .policies import Adaptive


def _deep_inputs(low: Features, spec: StageSpec) -> Features:
    return {name: low[name] for name in spec.deep_inputs}


class AsyncAdaptive(Adaptive):
    name = "async"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool: ThreadPoolExecutor | None = None  # started on first use, ended by close()
        self._pending: Future | None = None
        self._pending_step = -1
        self._pending_grey: Any = None  # the keyframe's flow image, taken when its deep run starts
        self._ref_step = -1  # step of the last keyframe started (the change reference)
        self._deferred = 0
        self._worker_ms = 0.0

    def reset(self) -> None:
        try:
            self._wait_pending()
        finally:  # the new stream starts clean either way
            super().reset()
            self._ref_step = -1
            self._deferred = 0
            self._worker_ms = 0.0

    def jump(self) -> None:
        try:
            self._wait_pending()  # its features are of the scene before the jump
        finally:
            super().jump()
            self._ref_step = -1

    def close(self) -> None:
        """Wait for a deep job in flight and end the worker thread. A failure of that job, which no
        frame collected, is raised here (after the worker ended) rather than lost with the stream."""
        pending, self._pending = self._pending, None
        self._pending_grey = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if pending is not None:
            failure = pending.exception()
            if failure is not None:
                raise self._annotated(failure)

    def _annotated(self, failure: BaseException) -> BaseException:
        """The worker's exception, saying which keyframe's deep run it ended (it surfaces frames later)."""
        return add_note(
            failure,
            f"rtseg async scheduler: the deep stage of keyframe {self._pending_step} (frame "
            f"{self._pending_step} of this stream) failed on the worker thread",
        )

    def _wait_pending(self) -> None:
        """Wait for a deep job in flight. Its failure, which no frame collected, is raised (as
        close() does), once: dropped with the stream, an out-of-memory on a clip's last keyframe
        went unseen when the next stream began."""
        pending = getattr(self, "_pending", None)
        if pending is not None:
            self._pending, self._pending_grey = None, None
            failure = pending.exception()
            if failure is not None:
                raise self._annotated(failure)
            self._worker_ms += pending.result()[1]  # run, if not used: the worker's time counts

    @property
    def stats(self) -> ScheduleStats:
        return ScheduleStats(self._step + 1, self._keyframes, self._deferred, self._worker_ms)

    def _timed_deep(self, engine: Engine, inputs: Features) -> tuple[Features, float]:
        t0 = time.perf_counter()
        deep = engine.run_deep(inputs)
        engine.synchronize()
        return deep, elapsed_ms(t0)

    def _collect(self) -> None:
        """Swap in a finished job's deep features; a failed job's exception is raised here, once, on
        the caller's thread, and the next frame starts that keyframe again (the cache is still the
        previous keyframe's, valid, but its change reference was the failed frame)."""
        if self._pending is None or not self._pending.done():
            return
        pending, self._pending = self._pending, None
        grey, self._pending_grey = self._pending_grey, None
        failure = pending.exception()
        if failure is not None:
            self._reference = None
            raise self._annotated(failure)
        deep, ms = pending.result()
        self._worker_ms += ms
        self._deep, self._deep_step = deep, self._pending_step
        if self.warp is not None:
            self.warp.set_keyframe_grey(grey)

    def step(self, engine: Engine, image: Any, *, index: int | None = None) -> SegResult:
        if index is not None:  # refused before the stages run: a refused frame leaves no trace
            check_count(index, "index")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        low = engine.run_low(image)
        engine.synchronize()  # on a GPU the stage returns queued, not done
        timings["low"] = elapsed_ms(t0)
        self._collect()  # before counting the frame: one that raises a worker failure has no result
        # Counted once the frame has its labels: a frame whose inline deep, warp or head stage
        # raised is not a frame (the next one takes its index), as in the synchronous schedulers.
        step = self._step + 1
        if self.warp is not None:
            self.warp.new_frame()
            image = host_image(image)  # once: the flow kept for it serves the change and the warp
        key, change = self._decide(engine, low, image, step - self._ref_step, timings)
        started = deferred = False
        if self._deep is None and self._pending is None:
            t0 = time.perf_counter()  # first frame: nothing to answer from, so deep runs inline
            self._deep, self._deep_step = engine.run_deep(low), step
            engine.synchronize()
            timings["deep"] = elapsed_ms(t0)
            if self.warp is not None:
                self.warp.set_keyframe(image)
            started = True
        elif key and self._pending is None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtseg-deep")
            self._pending = self._pool.submit(self._timed_deep, engine, _deep_inputs(low, engine.stage_spec))
            self._pending_step = step
            # The grey image now, not the frame: the caller may refill its buffer before deep ends.
            self._pending_grey = self.warp.grey_of(image) if self.warp is not None else None
            started = True
        elif key:
            deferred = True
        if started:
            # The change reference follows the deep run now, whatever the head does below: if the
            # head raises, the job submitted above stays in flight (it may already be running: it
            # can be neither taken back nor run twice) and is collected as usual. The frame that
            # retries takes this index (step), so the job's features are for "its" frame (age 0)
            # and the change is scored against them; only the keyframe count waits for the labels,
            # as the synchronous schedulers keep a deep run whose head failed but do not count it.
            self._ref_step = step
            self._keyframe_taken()
        used = self._deep
        if self.warp is not None and self._deep_step != step:
            t0 = time.perf_counter()
            used = self.warp.warp(self._deep, image)
            engine.synchronize()  # torch features on a GPU: grid_sample returns queued
            timings["warp"] = elapsed_ms(t0)
        t0 = time.perf_counter()
        labels = engine.run_head(low, used)
        timings["head"] = elapsed_ms(t0)
        self._step = step
        self._keyframes += started
        self._deferred += deferred
        return SegResult(
            labels=labels[0],
            frame_index=step if index is None else index,
            is_keyframe=started,
            deep_age=step - self._deep_step,
            classes=engine.meta.classes,
            timings=timings,
            change=change,
        )
