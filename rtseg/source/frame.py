"""A captured frame and where it came from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    """

    image: np.ndarray
    index: int
    timestamp: float
    monotonic: float
    source: str
    position_s: float | None = None  # media time for files and streams that report it
    discontinuity: bool = False

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]
