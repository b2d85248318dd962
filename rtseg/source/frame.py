"""A captured frame and where it came from."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, InputTypeError

_UINT8 = np.dtype(np.uint8)


@dataclass(frozen=True, slots=True)
class Frame:
    """One BGR uint8 image from a source.

    ``index`` is the source's own frame counter: for live sources it counts every captured frame,
    so gaps show frames that were dropped to stay real-time. ``timestamp`` is wall-clock capture
    time (``time.time()``, comparable across machines for end-to-end latency); ``monotonic`` is
    ``time.perf_counter()`` at capture, for latency inside this process. A ``realtime`` file,
    folder or synthetic scene's frame is captured when it is due by the wall clock (when the first
    frame was taken, plus the media time since), however late the consumer takes it, as a
    camera's frame waits for a slow consumer; other media sources stamp the hand-over. ``discontinuity`` marks
    the first frame after the stream jumped (a looped file's new pass, a live source's reconnect):
    what a consumer kept from earlier frames, such as a scheduler's deep-feature cache, does not
    describe it; ``Segmenter`` makes it a keyframe (``Scheduler.jump``).

    The fields are checked when a Frame is made (InputTypeError for a wrong type, ConfigError for
    a wrong value): ``discontinuity="no"`` was truthy and made a keyframe, ``index="7"`` came back
    as a result's ``frame_index``. ``index`` is a Python int >= 0: a NumPy integer is refused, as
    the result's ``frame_index`` goes into JSON (rtseg.stream), which takes no NumPy scalars.
    """

    image: np.ndarray
    index: int
    timestamp: float
    monotonic: float
    source: str
    position_s: float | None = None  # media time for files and streams that report it
    discontinuity: bool = False

    def __post_init__(self) -> None:
        # One expression for what every source makes (Python floats and ints, a uint8 ndarray):
        # 0.3 us a frame. Anything else, valid or not, goes through _check, which names the field.
        image, t, m, p = self.image, self.timestamp, self.monotonic, self.position_s
        if not (
            type(image) is np.ndarray
            and image.ndim == 3
            and image.shape[2] == 3
            and image.dtype is _UINT8
            and image.size
            and type(self.index) is int
            and self.index >= 0
            and type(t) is float
            and type(m) is float
            and math.isfinite(t + m)
            and (p is None or (type(p) is float and math.isfinite(p)))
            and type(self.source) is str
            and type(self.discontinuity) is bool
        ):
            self._check()

    def _check(self) -> None:
        image = self.image
        if not isinstance(image, np.ndarray):
            raise InputTypeError(
                f"Frame.image must be an HxWx3 uint8 BGR NumPy array, got {type(image).__name__}"
            )
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or not image.size:
            raise ConfigError(
                "Frame.image must be a non-empty HxWx3 uint8 BGR image, got shape "
                f"{image.shape} dtype {image.dtype}"
            )
        index = self.index
        if type(index) is not int:  # a bool is an int subclass, and no frame number
            raise InputTypeError(
                f"Frame.index must be an int (for a NumPy integer pass int(i)), got {index!r} "
                f"({type(index).__name__})"
            )
        if index < 0:
            raise ConfigError(f"Frame.index must be >= 0, got {index}")
        for name, value in (
            ("timestamp", self.timestamp),
            ("monotonic", self.monotonic),
            ("position_s", self.position_s),
        ):
            if value is None and name == "position_s":
                continue
            if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(
                value, (bool, np.bool_)
            ):
                raise InputTypeError(
                    f"Frame.{name} must be a number of seconds, got {value!r} ({type(value).__name__})"
                )
            if not math.isfinite(value):
                raise ConfigError(f"Frame.{name} must be a finite number of seconds, got {value!r}")
        if not isinstance(self.source, str):
            raise InputTypeError(
                f"Frame.source must be a str, got {self.source!r} ({type(self.source).__name__})"
            )
        if not isinstance(self.discontinuity, (bool, np.bool_)):  # "no" would mean True
            raise InputTypeError(
                f"Frame.discontinuity must be True or False, got {self.discontinuity!r} "
                f"({type(self.discontinuity).__name__})"
            )

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]
