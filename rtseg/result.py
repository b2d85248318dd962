"""What segmenting one frame produces."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .data.labels import ClassSet


@dataclass(frozen=True, slots=True)
class SegResult:
    """Class labels for one frame, with the scheduling facts that explain how they were made.

    ``labels`` is an h x w uint8 map at the engine's output resolution (resize with nearest
    neighbour to overlay it on the frame). ``deep_age`` counts frames since the deep features
    used here were computed: 0 on a keyframe. ``timings`` holds milliseconds per stage
    ("preprocess", "low", "deep", "head", ...); stages that did not run are absent.
    """

    labels: np.ndarray
    frame_index: int
    is_keyframe: bool
    deep_age: int
    classes: ClassSet
    timings: Mapping[str, float] = field(default_factory=dict)
    change: float | None = None  # the adaptive scheduler's feature-change score for this frame

    @property
    def latency_ms(self) -> float:
        return float(sum(self.timings.values()))
