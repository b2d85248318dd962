"""The synchronous keyframe policies: every frame, a fixed interval, or on feature change."""

from __future__ import annotations

import logging
import math
import numbers
import time
from types import MappingProxyType
from typing import Any

import numpy as np

from ..engine.base import Engine, Features
from ..errors import ConfigError
from .base import Scheduler
from .calibrate import changes_of_latest, threshold_for
from .change import ChangeMeasure
from .flow import FlowWarp

log = logging.getLogger(__name__)

CHANGES = ("features", "flow")
# Chosen from the CamVid sweep (docs/scheduling.md).
DEFAULT_THRESHOLD = MappingProxyType({"features": 0.12, "flow": 0.06})
DEFAULT_MAX_INTERVAL = 10
# The clockwork interval when none is given (make_scheduler, the CLI's --interval help).
DEFAULT_INTERVAL = 4


def _check_count(what: str, value: Any, minimum: int) -> None:
    """A frame count must be a whole number (2.5 or NaN frames would silently change the schedule)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ConfigError(f"{what} must be a whole number of frames >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {value}")


class Every(Scheduler):
    """Every frame is a keyframe: the reference every other schedule is measured against."""

    name = "every"

    def _decide(
        self, engine: Engine, low: Features, image: Any, age: int, timings: dict[str, float]
    ) -> tuple[bool, None]:
        return True, None


class Clockwork(Scheduler):
    """A keyframe every ``interval`` frames (Shelhamer et al., Clockwork Convnets, 2016)."""

    name = "clockwork"

    def __init__(self, interval: int = DEFAULT_INTERVAL, *, warp: FlowWarp | None = None) -> None:
        _check_count("clockwork interval", interval, 1)
        super().__init__(warp=warp)
        self.interval = interval

    def describe(self) -> str:
        return f"clockwork interval {self.interval}" + self._warp_text()

    def _decide(
        self, engine: Engine, low: Features, image: Any, age: int, timings: dict[str, float]
    ) -> tuple[bool, None]:
        return age >= self.interval, None


class Adaptive(Scheduler):
    """A keyframe when the frame changed by more than ``threshold`` since the last keyframe (Li, Shi
    and Lin, Low-Latency Video Semantic Segmentation, CVPR 2018), or when the cache is
    ``max_interval`` frames old.

    Two change scores (both defined in docs/scheduling.md): ``"features"``, the relative change of
    pooled low features (``change.py``), and ``"flow"``, the part of the change optical flow does
    not explain (``flow.residual_of``): with the flow warp, motion is compensated and should not
    by itself cost a deep run. ``change`` defaults to ``"flow"`` with a warp, else ``"features"``.

    With ``target_keyframe_rate`` (and no threshold) the first ``calibration_frames`` frames run a
    clockwork schedule at that rate while what the score needs is recorded; the threshold is then
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
        change: str | None = None,
    ) -> None:
        if threshold is not None and target_keyframe_rate is not None:
            raise ConfigError("give either threshold or target_keyframe_rate, not both")
        # "not x >= 0" also refuses NaN, which every comparison would silently treat as "no change".
        if threshold is not None and (
            not isinstance(threshold, numbers.Real) or isinstance(threshold, bool) or not threshold >= 0
        ):
            raise ConfigError(f"adaptive threshold must be a number >= 0, got {threshold!r}")
        _check_count("max_interval", max_interval, 1)
        if target_keyframe_rate is not None and (
            not isinstance(target_keyframe_rate, numbers.Real)
            or isinstance(target_keyframe_rate, bool)
            or not 0 < target_keyframe_rate <= 1
        ):
            raise ConfigError(f"target_keyframe_rate must be in (0, 1], got {target_keyframe_rate!r}")
        if target_keyframe_rate is not None and target_keyframe_rate * max_interval < 1 - 1e-9:
            # The maximum interval forces a keyframe every max_interval frames: a lower rate was
            # accepted and calibrated to 1/max_interval (0.1 asked 0.05), twice the deep budget asked.
            raise ConfigError(
                f"target_keyframe_rate {target_keyframe_rate:g} is below 1/max_interval "
                f"({1 / max_interval:g}): a keyframe comes at least every {max_interval} frames; "
                f"give max_interval >= {math.ceil(1 / target_keyframe_rate - 1e-9)}"
            )
        _check_count("calibration_frames", calibration_frames, 2)
        change = change or ("flow" if warp is not None else "features")
        if change not in CHANGES:
            raise ConfigError(f"change must be one of {CHANGES}, got {change!r}")
        if change == "flow" and warp is None:
            raise ConfigError(
                "change='flow' (the flow residual) needs the flow warp: pass warp=FlowWarp(), or use "
                "change='features'"
            )
        if change == "flow" and measure is not None:
            raise ConfigError(
                "measure (a ChangeMeasure of low features) does not apply to change='flow' (the flow "
                "residual, the default with a warp): use change='features', or leave measure out"
            )
        super().__init__(warp=warp)
        self.change = change
        self.measure = measure or ChangeMeasure()
        self.max_interval = max_interval
        self.target_keyframe_rate = target_keyframe_rate
        self.calibration_frames = calibration_frames
        default = DEFAULT_THRESHOLD[change]
        self._fixed_threshold = default if threshold is None and target_keyframe_rate is None else threshold
        self.threshold: float | None = self._fixed_threshold
        self._feature: str | None = None
        self._reference: Any = None  # features: the keyframe Summary; flow: True once a keyframe exists
        self._current: Any = None
        self._recorded: list[Any] = []
        self._pairs: dict[tuple[int, int], float] = {}  # calibration scores, taken frame by frame

    def describe(self) -> str:
        t = "calibrating" if self.threshold is None else f"threshold {self.threshold:.4g}"
        rate = f", target rate {self.target_keyframe_rate:g}" if self.target_keyframe_rate else ""
        warp = self._warp_text()
        return f"{self.name} ({self.change} change, {t}{rate}, max interval {self.max_interval}){warp}"

    def reset(self) -> None:
        super().reset()
        self.threshold = self._fixed_threshold
        self._reference = None
        self._current = None
        self._recorded = []
        self._pairs = {}

    def jump(self) -> None:
        super().jump()
        self._reference = None
        self._current = None

    def check(self, engine: Engine) -> None:
        super().check(engine)
        if self.change == "flow":
            return
        spec = engine.stage_spec
        name = self.measure.resolve(tuple(f.name for f in spec.low), spec.deep_inputs)
        stride = next(f.stride for f in spec.low if f.name == name)
        w, h = engine.input_size
        if w // stride < self.measure.pool or h // stride < self.measure.pool:
            raise ConfigError(
                f"change pooling {self.measure.pool} is larger than the {name!r} feature map "
                f"({w // stride}x{h // stride} at input {w}x{h})"
            )

    def _calibration_interval(self) -> int:
        rate = self.target_keyframe_rate or 1.0
        return max(1, min(self.max_interval, round(1.0 / rate)))

    def _score(self, engine: Engine, low: Features, image: Any) -> tuple[float | None, Any]:
        """(change against the keyframe or None without one, what calibration records)."""
        if self.change == "flow" and self.warp is not None:
            host = _host(image)
            if self._reference is None:
                return None, self.warp.grey(host)
            return self.warp.residual(host), self.warp.grey(host) if self.threshold is None else None
        if self._feature is None:
            self._feature = self.measure.resolve(tuple(low), engine.stage_spec.deep_inputs)
        current = self.measure.summarize(low[self._feature])
        self._current = current
        score = None if self._reference is None else self.measure.distance(current, self._reference)
        return score, current

    def _distance(self, current: Any, reference: Any) -> float:
        if self.change == "flow" and self.warp is not None:
            return self.warp.residual_between(current, reference)
        return self.measure.distance(current, reference)

    def _decide(
        self, engine: Engine, low: Features, image: Any, age: int, timings: dict[str, float]
    ) -> tuple[bool, float | None]:
        t0 = time.perf_counter()
        if self.threshold is not None and self.change == "flow" and age >= self.max_interval:
            # The maximum interval makes this a keyframe whatever the score: its flow (3 ms at
            # 1024x512) would serve neither the decision nor a warp. The feature score is kept: its
            # summary becomes the next reference.
            timings["change"] = (time.perf_counter() - t0) * 1000.0
            return True, None
        change, record = self._score(engine, low, image)
        if self.threshold is None:  # calibrating
            self._recorded.append(record)
            self._pairs.update(changes_of_latest(self._recorded, self._distance, self.max_interval))
            key = self._reference is None or age >= self._calibration_interval()
            if len(self._recorded) >= self.calibration_frames:
                self._calibrate()
        else:
            # A NaN or inf score (features overflowed) says nothing about change: refresh the cache.
            changed = change is not None and (not math.isfinite(change) or change > self.threshold)
            key = self._reference is None or age >= self.max_interval or changed
        timings["change"] = (time.perf_counter() - t0) * 1000.0
        return key, change

    def _calibrate(self) -> None:
        n, pairs = len(self._recorded), self._pairs
        self._recorded, self._pairs = [], {}
        if not any(math.isfinite(c) and c > 0 for c in pairs.values()):
            # A still opening (a paused camera, a title card): the only candidate, 0, would make
            # every later frame a keyframe.
            self.threshold = DEFAULT_THRESHOLD[self.change]
            log.warning(
                "adaptive: the %d opening frames did not change, so no threshold reproduces a keyframe "
                "rate of %.3g on them; using the default threshold %.4g",
                n,
                self.target_keyframe_rate,
                self.threshold,
            )
            return
        self.threshold, ratio = threshold_for(
            pairs, n, target_rate=self.target_keyframe_rate or 1.0, max_interval=self.max_interval
        )
        log.info(
            "adaptive: threshold %.4g calibrated on %d frames for a keyframe rate of %.3g "
            "(gives %.3g on them)",
            self.threshold,
            n,
            self.target_keyframe_rate,
            ratio,
        )

    def _keyframe_taken(self) -> None:
        self._reference = True if self.change == "flow" else self._current


def _host(image: Any) -> Any:
    return image if isinstance(image, np.ndarray) else image.cpu().numpy()
