"""The keyframe loop every scheduler shares.

Per frame: run ``low``; decide whether this is a keyframe; on a keyframe run ``deep`` and cache
it; always run ``head(low_now, cached_deep)``. Subclasses only decide (``_decide``). A scheduler
holds per-stream state (the deep cache, the keyframe reference): use one per camera; ``jump`` it
when the stream jumps (a seek, a reconnect) and ``reset`` it for a new stream.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.base import Engine, Features
from ..ownership import SingleOwner
from ..result import SegResult, check_count
from .flow import FlowWarp


@dataclass(frozen=True)
class ScheduleStats:
    frames: int
    keyframes: int
    deferred: int = 0  # async: keyframes not started because the worker was busy
    worker_deep_ms: float = 0.0  # async: deep time spent on the worker thread

    @property
    def keyframe_ratio(self) -> float:
        return self.keyframes / self.frames if self.frames else float("nan")


class Scheduler(ABC):
    """Decides which frames run the deep stage and owns the deep-feature cache."""

    name: str = "scheduler"

    def __init__(self, *, warp: FlowWarp | None = None) -> None:
        self.warp = warp
        self._deep: Features | None = None
        self._deep_step = -1
        self._step = -1
        self._keyframes = 0
        self._owner = SingleOwner()  # the Segmenter this stream's state serves

    def claim(self, owner: object) -> None:
        """Bind this scheduler to one Segmenter. Its cache is one stream's: shared by two Segmenters
        (two cameras) one would be answered from the other's deep features, silently."""
        self._owner.claim(
            owner,
            lambda: (
                f"this scheduler ({self.describe()}) already serves another Segmenter: it holds one "
                "stream's deep features and keyframe reference; give each Segmenter its own "
                "(rtseg.schedule.make_scheduler(...) again), or close the other Segmenter first"
            ),
        )

    def release(self, owner: object) -> None:
        """Undo ``claim`` (the Segmenter closed or switched schedulers)."""
        self._owner.release(owner)

    def describe(self) -> str:
        return self.name + self._warp_text()

    def _warp_text(self) -> str:
        """The warp as the end of a description ("" without one)."""
        return "" if self.warp is None else " + " + self.warp.describe()

    @abstractmethod
    def _decide(
        self, engine: Engine, low: Features, image: Any, age: int, timings: dict[str, float]
    ) -> tuple[bool, float | None]:
        """(is_keyframe, change score) for a frame whose cached deep features would be ``age`` frames old."""

    def check(self, engine: Engine) -> None:
        """Raise ConfigError if this scheduler cannot run on ``engine``: at set-up, not at frame one."""
        self.check_input_size(*engine.input_size)

    @property
    def limits_input_size(self) -> bool:
        """Whether ``check_input_size`` refuses some input size (see ``FlowWarp.limits_input``)."""
        return self.warp is not None and self.warp.limits_input

    def check_input_size(self, w: int, h: int) -> None:
        """The part of ``check`` that needs only the engine's input size (w, h): a caller that knows
        it before the engine loads refuses there, not after the build (and auto's timing runs)."""
        if self.warp is not None:
            self.warp.check_input(w, h)

    def _keyframe_taken(self) -> None:  # noqa: B027 (optional hook)
        """Called after a keyframe's deep stage ran (update references)."""

    def reset(self) -> None:
        self._deep = None
        self._deep_step = -1
        self._step = -1
        self._keyframes = 0
        if self.warp is not None:
            self.warp.reset()

    def jump(self) -> None:
        """The stream jumped (a looped file's new pass, a camera reconnected): the cached deep
        features and the keyframe reference describe another scene, so the next frame is a
        keyframe. Unlike ``reset`` the stream goes on: its frame count, statistics and a calibrated
        threshold stay (reset every pass, a loop shorter than the calibration never calibrated)."""
        self._deep = None
        self._deep_step = -1
        if self.warp is not None:
            self.warp.reset()

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release worker threads; the scheduler cannot be used afterwards."""

    @property
    def stats(self) -> ScheduleStats:
        return ScheduleStats(self._step + 1, self._keyframes)

    def step(self, engine: Engine, image: Any, *, index: int | None = None) -> SegResult:
        """Segment one frame (uint8 BGR at the engine's input size)."""
        if index is not None:  # refused before the stages run: a refused frame leaves no trace
            check_count(index, "index")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        low = engine.run_low(image)
        engine.synchronize()  # on a GPU the stage returns queued, not done
        timings["low"] = elapsed_ms(t0)
        step = self._step + 1  # counted once the frame has its labels: a failed one is not a frame
        age = step - self._deep_step
        if self.warp is not None:
            self.warp.new_frame()
            image = host_image(image)  # once: the flow kept for it serves the change and the warp
        key, change = self._decide(engine, low, image, age, timings)
        if key or self._deep is None:
            t0 = time.perf_counter()
            deep = engine.run_deep(low)
            engine.synchronize()
            timings["deep"] = elapsed_ms(t0)
            self._deep, self._deep_step = deep, step
            self._keyframe_taken()
            used = deep
            if self.warp is not None:
                t0 = time.perf_counter()
                self.warp.set_keyframe(image)
                timings["warp"] = elapsed_ms(t0)
            key = True
        else:
            used = self._deep
            if self.warp is not None:
                t0 = time.perf_counter()
                used = self.warp.warp(self._deep, image)
                engine.synchronize()  # torch features on a GPU: grid_sample returns queued
                timings["warp"] = elapsed_ms(t0)
        t0 = time.perf_counter()
        labels = engine.run_head(low, used)
        timings["head"] = elapsed_ms(t0)
        self._step = step
        self._keyframes += key
        return SegResult(
            labels=labels[0],
            frame_index=step if index is None else index,
            is_keyframe=key,
            deep_age=step - self._deep_step,
            classes=engine.meta.classes,
            timings=timings,
            change=change,
        )


def elapsed_ms(t0: float) -> float:
    """Milliseconds since ``t0`` (a ``time.perf_counter()``), as a step's timings record them.
    Public: the async scheduler times its steps the same way."""
    return (time.perf_counter() - t0) * 1000.0


def host_image(image: Any) -> np.ndarray:
    """The frame as a NumPy array (a GPU tensor copied to the host), as the flow warp reads it.
    Public: the async scheduler's step reads it the same way."""
    return image if isinstance(image, np.ndarray) else image.cpu().numpy()
