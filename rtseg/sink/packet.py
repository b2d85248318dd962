"""What the pipeline hands to every sink: the frame, its result, and the overlay, drawn once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputTypeError
from ..overlay.annotate import OverlayStyle, annotate, check_fps
from ..result import SegResult
from ..source.frame import Frame


@dataclass(eq=False)
class Packet:
    """Shared by all sinks of a frame. ``overlay()`` draws on first use, in the sink thread that
    needs it, so drawing stays off the inference thread and happens once however many sinks ask."""

    frame: Frame
    result: SegResult
    style: OverlayStyle = field(default_factory=OverlayStyle)
    fps: float | None = None
    on_overlay: Callable[[float], None] | None = None  # told the drawing time in ms (cost accounting)
    # perf_counter when the result was handed to the sinks: how far behind a sink is (its own
    # backlog; the time since capture also holds the inference, however slow the model)
    handed: float = field(default_factory=time.perf_counter, init=False)
    _overlay: np.ndarray | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        # Checked here, on the caller's thread: a wrong field failed later on the sink's thread
        # (AttributeError, the frame counted as an error, nothing written, no exception raised).
        for name, value, kind in (("frame", self.frame, Frame), ("result", self.result, SegResult)):
            if not isinstance(value, kind):
                raise InputTypeError(f"Packet.{name} must be a {kind.__name__}, got {type(value).__name__}")
        if not isinstance(self.style, OverlayStyle):
            raise InputTypeError(
                f"Packet.style must be a rtseg.overlay.OverlayStyle, got {self.style!r} "
                f"({type(self.style).__name__}): pass OverlayStyle(mode=...)"
            )
        if self.fps is not None:
            check_fps(self.fps)

    def overlay(self) -> np.ndarray:
        with self._lock:
            if self._overlay is None:
                s = self.style
                start = time.perf_counter()
                self._overlay = annotate(
                    self.frame.image, self.result, s.mode, s.alpha, s.legend, s.hud, fps=self.fps
                )
                if self.on_overlay is not None:
                    self.on_overlay((time.perf_counter() - start) * 1000)
            return self._overlay
