"""The synchronous keyframe policies: every frame, a fixed interval, or on feature change."""

from __future__ import annotations

import logging
import time

from ..engine.base import Engine, Features
from ..errors import ConfigError
from .base import Scheduler
from .calibrate import calibrate_threshold
from .change import ChangeMeasure, Summary
from .flow import FlowWarp

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.1
DEFAULT_MAX_INTERVAL = 10


class Every(Scheduler):
    """Every frame is a keyframe: the reference every other schedule is measured against."""

    name = "every"

    def _decide(self, engine: Engine, low: Features, age: int, timings: dict[str, float]) -> tuple[bool, None]:
        return True, None


class Clockwork(Scheduler):
    """A keyframe every ``interval`` frames (Shelhamer et al., Clockwork Convnets, 2016)."""

    name = "clockwork"

    def __init__(self, interval: int = 4, *, warp: FlowWarp | None = None) -> None:
        if interval < 1:
            raise ConfigError(f"clockwork interval must be >= 1, got {interval}")
        super().__init__(warp=warp)
        self.interval = interval

    def describe(self) -> str:
        return f"clockwork interval {self.interval}" + (" + flow warp" if self.warp is not None else "")

    def _decide(self, engine: Engine, low: Features, age: int, timings: dict[str, float]) -> tuple[bool, None]:
        return age >= self.interval, None


class Adaptive(Scheduler):
    """A keyframe when the low features changed by more than ``threshold`` since the last one
    (Li, Shi and Lin, Low-Latency Video Semantic Segmentation, CVPR 2018), or when the cache is
    ``max_interval`` frames old. The change score is defined in ``change.py``.

    With ``target_keyframe_rate`` (and no threshold) the first ``calibration_frames`` frames run a
    clockwork schedule at that rate while their features are recorded; the threshold is then
    chosen to reproduce the rate on them (``calibrate.py``).
    """

    name = "adaptive"

    def __init__(
        self,
        threshold: float | None = None,
        *,
        max_interval: int = DEFAULT_MAX_INTERVAL,
        target_keyframe_rate: float | None = None,
        calibration_frames: int = 30,
        measure: ChangeMeasure | None = None,
        warp: FlowWarp | None = None,
    ) -> None:
        if threshold is not None and target_keyframe_rate is not None:
            raise ConfigError("give either a threshold or a target keyframe rate, not both")
        if threshold is not None and threshold < 0:
            raise ConfigError(f"adaptive threshold must be >= 0, got {threshold}")
        if max_interval < 1:
            raise ConfigError(f"max_interval must be >= 1, got {max_interval}")
        if target_keyframe_rate is not None and not 0 < target_keyframe_rate <= 1:
            raise ConfigError(f"target keyframe rate must be in (0, 1], got {target_keyframe_rate}")
        if calibration_frames < 2:
            raise ConfigError(f"calibration_frames must be >= 2, got {calibration_frames}")
        super().__init__(warp=warp)
        self.measure = measure or ChangeMeasure()
        self.max_interval = max_interval
        self.target_keyframe_rate = target_keyframe_rate
        self.calibration_frames = calibration_frames
        self._fixed_threshold = DEFAULT_THRESHOLD if threshold is None and target_keyframe_rate is None \
            else threshold
        self.threshold: float | None = self._fixed_threshold
        self._feature: str | None = None
        self._reference: Summary | None = None
        self._current: Summary | None = None
        self._recorded: list[Summary] = []

    def describe(self) -> str:
        t = "calibrating" if self.threshold is None else f"threshold {self.threshold:.4g}"
        rate = f", target rate {self.target_keyframe_rate:g}" if self.target_keyframe_rate else ""
        warp = " + flow warp" if self.warp is not None else ""
        return f"{self.name} ({t}{rate}, max interval {self.max_interval}){warp}"

    def reset(self) -> None:
        super().reset()
        self.threshold = self._fixed_threshold
        self._reference = None
        self._current = None
        self._recorded = []

    def _calibration_interval(self) -> int:
        rate = self.target_keyframe_rate or 1.0
        return max(1, min(self.max_interval, round(1.0 / rate)))

    def _decide(self, engine: Engine, low: Features, age: int, timings: dict[str, float]) -> tuple[bool, float | None]:
        t0 = time.perf_counter()
        if self._feature is None:
            self._feature = self.measure.resolve(tuple(low), engine.stage_spec.deep_inputs)
        current = self.measure.summarize(low[self._feature])
        self._current = current
        change = None if self._reference is None else self.measure.distance(current, self._reference)
        if self.threshold is None:  # calibrating
            self._recorded.append(current)
            key = self._reference is None or age >= self._calibration_interval()
            if len(self._recorded) >= self.calibration_frames:
                self.threshold, ratio = calibrate_threshold(
                    self._recorded, self.measure, target_rate=self.target_keyframe_rate or 1.0,
                    max_interval=self.max_interval,
                )
                self._recorded = []
                log.info("adaptive: threshold %.4g calibrated on %d frames for a keyframe rate of %.3g "
                         "(gives %.3g on them)", self.threshold, self.calibration_frames,
                         self.target_keyframe_rate, ratio)
        else:
            key = self._reference is None or age >= self.max_interval or (change or 0.0) > self.threshold
        timings["change"] = (time.perf_counter() - t0) * 1000.0
        return key, change

    def _keyframe_taken(self) -> None:
        self._reference = self._current
