"""What segmenting one frame produces."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from .data.labels import ClassSet
from .errors import ConfigError, InputTypeError


def labels_at(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Labels resized (nearest neighbour) to an h x w shape; the same array when it already fits.

    INTER_NEAREST_EXACT takes the source pixel under each output pixel's centre, the alignment
    of the bilinear image resize; INTER_NEAREST floors the corner and shifts labels by up to half
    an output pixel towards the top left at non-integer scales (480x360 into 1280x720).
    """
    try:
        h, w = (operator.index(n) for n in tuple(shape)[:2])
    except (TypeError, ValueError):
        raise InputTypeError(
            f"shape must be (h, w) or (h, w, channels) in whole pixels, got {shape!r}"
        ) from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"shape must have a positive height and width, got {tuple(shape)}")
    if labels.shape == (h, w):
        return labels
    return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)


@dataclass(frozen=True, slots=True)
class SegResult:
    """Class labels for one frame, with the scheduling facts that explain how they were made.

    ``labels`` is an h x w uint8 map at the engine's output resolution; ``labels_at(frame.image.shape)``
    gives it at the frame's (nearest neighbour). ``is_keyframe``: the deep stage ran on this frame.
    ``deep_age`` counts the frames segmented (results of this stream's schedule) since the one whose
    deep features were used here: 0 on a keyframe of a synchronous schedule; an ``async`` keyframe's
    deep stage runs on a worker, and the frame itself is answered from the older cache
    (``deep_age`` > 0, no "deep" timing). It is not a count of source frames: while one frame is
    segmented a live source keeps only the newest it captures, so ``frame_index - deep_age`` is not
    the keyframe's index; the features' age in time is this frame's capture time
    (``Frame.monotonic``) minus that of the frame segmented ``deep_age`` results earlier.
    ``timings`` holds milliseconds per stage ("preprocess", "low", "deep", "head", ...), each
    waited for on a GPU (``Engine.synchronize``); stages that did not run are absent.
    """

    labels: np.ndarray
    frame_index: int
    is_keyframe: bool
    deep_age: int
    classes: ClassSet
    timings: Mapping[str, float] = field(default_factory=dict)
    # The adaptive scheduler's change score: None without a keyframe to compare with, and for the
    # flow score on a keyframe the maximum interval forces (not computed: it decides nothing).
    change: float | None = None

    @property
    def latency_ms(self) -> float:
        return float(sum(self.timings.values()))

    def labels_at(self, shape: tuple[int, ...]) -> np.ndarray:
        """The labels at an image's size: ``shape`` is (h, w) or an image's (h, w, channels)."""
        return labels_at(self.labels, shape)
