"""What segmenting one frame produces."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from .data.labels import ClassSet
from .errors import ConfigError, InputTypeError

_UINT8 = np.dtype(np.uint8)


def _is_real(value: object) -> bool:
    """An int or float (NumPy's too), not a bool or a string that looks like one."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def check_count(value: object, name: str) -> None:
    """InputTypeError unless ``value`` is a Python int, ConfigError unless >= 0: a frame index or
    age, which rtseg.stream puts into JSON (no NumPy scalars; a bool is an int subclass)."""
    if type(value) is not int:
        raise InputTypeError(
            f"{name} must be an int (for a NumPy integer pass int(n)), got {value!r} ({type(value).__name__})"
        )
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")


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

    The fields are checked when a SegResult is made (InputTypeError for a wrong type, ConfigError
    for a wrong value): ``is_keyframe`` a bool, ``frame_index`` and ``deep_age`` Python ints >= 0
    (rtseg.stream puts them into JSON, which takes no NumPy scalars).
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

    def __post_init__(self) -> None:
        # What schedulers make (Python ints and bools, a uint8 label map) passes one expression;
        # anything else goes through _check, which names the field. is_keyframe, frame_index and
        # deep_age go into rtseg.stream's JSON headers, which take no NumPy scalars.
        labels = self.labels
        if not (
            type(labels) is np.ndarray
            and labels.ndim == 2
            and labels.dtype is _UINT8
            and type(self.frame_index) is int
            and self.frame_index >= 0
            and type(self.is_keyframe) is bool
            and type(self.deep_age) is int
            and self.deep_age >= 0
            and isinstance(self.classes, ClassSet)
            and type(self.timings) is dict
            and (self.change is None or type(self.change) is float)
        ):
            self._check()

    def _check(self) -> None:
        labels = self.labels
        if not isinstance(labels, np.ndarray):
            raise InputTypeError(
                f"SegResult.labels must be an h x w uint8 NumPy array, got {type(labels).__name__}"
            )
        if labels.ndim != 2 or labels.dtype != np.uint8:
            raise ConfigError(
                f"SegResult.labels must be an h x w uint8 map, got shape {labels.shape} dtype {labels.dtype}"
            )
        for name in ("frame_index", "deep_age"):
            check_count(getattr(self, name), f"SegResult.{name}")
        if type(self.is_keyframe) is not bool:  # "no" would mean True; np.bool_ fails in JSON
            raise InputTypeError(
                f"SegResult.is_keyframe must be True or False, got {self.is_keyframe!r} "
                f"({type(self.is_keyframe).__name__})"
            )
        if not isinstance(self.classes, ClassSet):
            raise InputTypeError(
                f"SegResult.classes must be a rtseg ClassSet, got {type(self.classes).__name__}"
            )
        if not isinstance(self.timings, Mapping):
            raise InputTypeError(
                "SegResult.timings must be a mapping of stage name to milliseconds, got "
                f"{type(self.timings).__name__}"
            )
        if self.change is not None and not _is_real(self.change):
            raise InputTypeError(
                f"SegResult.change must be None or a number, got {self.change!r} "
                f"({type(self.change).__name__})"
            )

    @property
    def latency_ms(self) -> float:
        return float(sum(self.timings.values()))

    def labels_at(self, shape: tuple[int, ...]) -> np.ndarray:
        """The labels at an image's size: ``shape`` is (h, w) or an image's (h, w, channels)."""
        return labels_at(self.labels, shape)
