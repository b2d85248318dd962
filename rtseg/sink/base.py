"""Sinks: outputs that never block inference unless asked to.

Every sink runs its ``emit`` on its own thread behind a bounded queue. With ``policy="drop"``
(live sources) a full queue drops the oldest packet and counts it, so a slow disk or network
costs frames, never latency. With ``policy="block"`` (files) the pipeline waits: every frame of
a recording is written.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

from ..errors import SinkError
from .packet import Packet

log = logging.getLogger(__name__)

Policy = Literal["drop", "block"]
_STOP = object()


@dataclass(frozen=True)
class SinkStats:
    written: int
    dropped: int
    errors: int
    last_error: str | None
    emit_ms: float = 0.0  # total time spent in emit (drawing, encoding, writing) on the sink's thread


class Sink(ABC):
    """Base class: subclasses implement ``emit`` (and ``release`` for cleanup)."""

    def __init__(self, uri: str, *, queue_size: int = 4, policy: Policy = "drop") -> None:
        if queue_size <= 0:
            raise ValueError(f"queue_size must be positive, got {queue_size}")
        if policy not in ("drop", "block"):
            raise ValueError(f"policy must be 'drop' or 'block', got {policy!r}")
        self.uri = uri
        self.policy: Policy = policy
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._written = 0
        self._dropped = 0
        self._errors = 0
        self._last_error: str | None = None
        self._emit_ms = 0.0
        self._lock = threading.Lock()
        self._closed = False
        self._stop_requested = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"sink:{uri}", daemon=True)
        self._thread.start()

    @abstractmethod
    def emit(self, packet: Packet) -> None:
        """Write one packet; runs on the sink's thread."""

    @property
    def destination(self) -> str:
        """Where the output goes, as a user should be told (a publisher adds the port it bound)."""
        return self.uri

    def release(self) -> None:  # noqa: B027 (optional hook)
        """Flush and close the underlying output; runs on the sink's thread after the last emit."""

    def write(self, packet: Packet) -> None:
        if self._closed:
            raise SinkError(f"{self.uri}: write after close")
        if self.policy == "block":
            self._queue.put(packet)
            return
        while True:
            try:
                self._queue.put_nowait(packet)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    with self._lock:
                        self._dropped += 1
                except queue.Empty:
                    pass

    def _loop(self) -> None:
        while True:
            packet = self._queue.get()
            if packet is _STOP:
                break
            start = time.perf_counter()
            try:
                self.emit(packet)
                with self._lock:
                    self._written += 1
                    self._emit_ms += (time.perf_counter() - start) * 1000
            except Exception as exc:  # a failing output must not take the pipeline down
                with self._lock:
                    self._errors += 1
                    first = self._last_error is None
                    self._last_error = f"{type(exc).__name__}: {exc}"
                if first:
                    log.error("sink %s: %s", self.uri, self._last_error)
        try:
            self.release()
        except Exception as exc:
            with self._lock:
                self._errors += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
            log.error("sink %s: closing failed: %s", self.uri, self._last_error)

    def close(self, timeout: float | None = 30.0) -> SinkStats:
        """Deliver what is queued, release the output, and return the final counts."""
        if not self._closed:
            self._closed = True
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    self._queue.put(_STOP, timeout=0.1)
                    break
                except queue.Full:
                    if deadline is not None and time.monotonic() > deadline:
                        log.warning("sink %s: queue did not drain in %.0f s", self.uri, timeout)
                        break
            self._thread.join(timeout)
        return self.stats

    @property
    def stats(self) -> SinkStats:
        with self._lock:
            return SinkStats(self._written, self._dropped, self._errors, self._last_error, self._emit_ms)

    def request_stop(self) -> None:
        """Ask the pipeline feeding this sink to stop (a closed window, a 'q' key press)."""
        self._stop_requested.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
