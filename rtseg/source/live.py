"""Cameras and network streams: a capture thread that keeps only the newest frame.

A live producer does not wait for the consumer. Reading frames only when the consumer asks
(OpenCV's default) lets the driver's or FFmpeg's buffer fill up, and the consumer then sees a
stale backlog seconds behind reality. Here a thread drains the capture as fast as frames come and
keeps one slot with the newest; the consumer always gets the freshest frame and the frame
indices show what it skipped.

A capture that stops delivering is released and reopened with exponential backoff; every
attempt is logged and counted. After ``reconnect`` failed attempts in a row the consumer gets a
SourceError. The capture is built by a factory, so a disconnect can be simulated in tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from ..errors import SourceError
from .base import Source, SourceInfo, SourceOptions
from .frame import Frame

log = logging.getLogger(__name__)


class Capture(Protocol):
    """The part of cv2.VideoCapture a live source uses."""

    def isOpened(self) -> bool: ...

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[], Capture]


def camera_factory(index: int, props: dict[int, float]) -> CaptureFactory:
    def make() -> Capture:
        cap = cv2.VideoCapture(index)
        for prop, value in props.items():
            cap.set(prop, value)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's queue is stale frames waiting to happen
        return cap

    return make


def v4l2_factory(device: str, props: dict[int, float]) -> CaptureFactory:
    def make() -> Capture:
        if not Path(device).exists():
            raise SourceError(f"no such video device: {device}")
        cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
        for prop, value in props.items():
            cap.set(prop, value)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap

    return make


def network_factory(url: str, timeout: float) -> CaptureFactory:
    ms = int(timeout * 1000)

    def make() -> Capture:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)

    return make


class LiveSource(Source):
    """A camera or stream read on its own thread; ``next()`` returns the newest frame."""

    def __init__(
        self, uri: str, kind: str, factory: CaptureFactory, options: SourceOptions, *, hint: str = ""
    ) -> None:
        super().__init__(uri, options)
        self._factory = factory
        self._hint = hint
        self._cap = self._open()
        if self._cap is None:
            raise SourceError(f"cannot open {uri}{': ' + hint if hint else ''}")
        fps = _get(self._cap, cv2.CAP_PROP_FPS)
        native = (
            int(_get(self._cap, cv2.CAP_PROP_FRAME_WIDTH)),
            int(_get(self._cap, cv2.CAP_PROP_FRAME_HEIGHT)),
        )
        self.info = SourceInfo(
            uri=uri,
            kind=kind,
            live=True,
            fps=fps if 0 < fps < 1000 else None,
            size=self._output_size(native if min(native) > 0 else None),
        )
        self._cond = threading.Condition()
        self._latest: tuple[np.ndarray, int, float, float] | None = None
        self._captured = 0
        self._last_index = -1
        self._next_due = 0.0
        self._attempts = 0
        self._heartbeat = time.perf_counter()
        self._error: SourceError | None = None
        self._finished = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._capture_loop, name=f"source:{uri}", daemon=True)
        self._thread.start()

    def _open(self) -> Capture | None:
        try:
            cap = self._factory()
        except SourceError:
            raise
        except Exception as exc:  # a driver or FFmpeg failure is a failed open, reported as such
            log.debug("%s: open failed: %s", self.uri, exc)
            return None
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None
        return cap

    def _capture_loop(self) -> None:
        cap: Capture | None = self._cap
        try:
            while cap is not None and not self._stop.is_set():
                try:
                    ok, image = cap.read()
                except Exception as exc:  # treated like a failed read: reconnect
                    log.debug("%s: read failed: %s", self.uri, exc)
                    ok, image = False, None
                if self._stop.is_set():
                    break
                if ok and image is not None:
                    with self._cond:
                        self._attempts = 0
                        self._latest = (image, self._captured, time.time(), time.perf_counter())
                        self._captured += 1
                        self._heartbeat = time.perf_counter()
                        self._cond.notify_all()
                    continue
                cap.release()
                cap = self._reconnect()
        finally:
            if cap is not None:
                cap.release()
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _reconnect(self) -> Capture | None:
        limit = self.options.reconnect
        while self._attempts < limit:
            delay = min(self.options.backoff * 2 ** min(self._attempts, 30), self.options.backoff_max)
            self._attempts += 1
            log.warning(
                "%s: no frame; reconnecting in %.2f s (attempt %d of %d)",
                self.uri,
                delay,
                self._attempts,
                limit,
            )
            if self._stop.wait(delay):
                return None
            with self._cond:
                self._heartbeat = time.perf_counter()  # trying is progress: the consumer keeps waiting
            try:
                cap = self._open()
            except SourceError as exc:
                log.warning("%s: %s", self.uri, exc)
                cap = None
            if cap is not None:
                with self._cond:
                    self._reconnects += 1
                    self._heartbeat = time.perf_counter()
                log.warning("%s: reconnected (reconnect #%d)", self.uri, self._reconnects)
                return cap
        with self._cond:
            self._error = SourceError(
                f"{self.uri}: lost, and {limit} reconnect attempt(s) failed"
                f"{': ' + self._hint if self._hint else ''}"
            )
            self._cond.notify_all()
        return None

    def _next_frame(self) -> Frame | None:
        rate = self.options.rate
        if rate is not None:
            wait = self._next_due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        with self._cond:
            while True:
                if self._latest is not None and self._latest[1] > self._last_index:
                    break
                if self._error is not None:
                    raise self._error
                if self._finished:
                    return None
                if time.perf_counter() - self._heartbeat > self.options.timeout:
                    raise SourceError(f"{self.uri}: no frame for {self.options.timeout:g} s")
                self._cond.wait(0.05)
            image, index, wall, mono = self._latest
            self._latest = None  # the consumer owns it now
        self._dropped += index - self._last_index - 1
        self._last_index = index
        if rate is not None:
            self._next_due = max(self._next_due + 1.0 / rate, time.perf_counter())
        return Frame(self._resize(image), index, wall, mono, self.uri)

    def _release(self) -> None:
        self._stop.set()
        self._thread.join(self.options.timeout)
        if self._thread.is_alive():
            log.warning("%s: capture thread still blocked in read after %g s", self.uri, self.options.timeout)


def _get(cap: Any, prop: int) -> float:
    getter = getattr(cap, "get", None)
    if getter is None:
        return 0.0
    try:
        return float(getter(prop))
    except Exception:
        return 0.0
