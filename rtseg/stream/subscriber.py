"""Receiving published results: typed messages, gap counting, and a latest-only mode.

``latest=True`` answers the slow-subscriber problem: a background thread drains the socket as fast
as messages arrive and keeps only the newest one, so a consumer that takes 50 ms per message
always gets a fresh frame instead of working through a backlog. (``ZMQ_CONFLATE`` cannot do this:
it keeps the last *frame* and breaks multipart messages.) Only the header is parsed on that thread;
image parts are decoded in ``recv``, for the messages the consumer actually takes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import zmq

from ..data.labels import ClassSet
from ..errors import ConfigError, StreamTimeout
from .curve import apply_client_keys
from .endpoint import check_endpoint
from .protocol import DEFAULT_MAX_PIXELS, FrameHeader, decode_frame_header, decode_frame_parts

log = logging.getLogger(__name__)
_POLL_SLICE_S = 0.05  # how soon a blocked recv notices close() from another thread
# A SUB socket never sends, so a TCP connection that died without being closed (the publisher's
# host lost power or rebooted, the network partitioned) would look alive forever and never be
# reconnected, even once the publisher is back. TCP keepalive probes it after KEEPALIVE_IDLE_S
# seconds without data and resets it when KEEPALIVE_COUNT probes, KEEPALIVE_INTERVAL_S apart, go
# unanswered (or at once when a rebooted host answers with a reset); libzmq then reconnects.
# (Not ZMTP heartbeats: with a full receive queue libzmq 4.3 then aborts, zeromq/libzmq#3937.)
KEEPALIVE_IDLE_S = 2
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_COUNT = 3


@dataclass(frozen=True, eq=False)
class Message:
    """One received result: the header, the decoded parts, and when it arrived.

    ``classes`` comes from this message's header or, when the header omits it (it is sent every
    N messages), from the last header of the same stream that had it.
    """

    topic: str
    header: FrameHeader
    parts: dict[str, np.ndarray]
    recv_ts: float  # wall clock, comparable with the header's capture_ts / publish_ts
    classes: ClassSet | None = None
    skipped: int = 0  # messages dropped in latest mode since the previous recv
    raw_bytes: int = field(default=0, repr=False)

    @property
    def labels(self) -> np.ndarray | None:
        return self.parts.get("labels")

    @property
    def overlay(self) -> np.ndarray | None:
        return self.parts.get("overlay")

    @property
    def frame(self) -> np.ndarray | None:
        return self.parts.get("frame")

    @property
    def latency_ms(self) -> float:
        """Capture to receipt (wall clocks: meaningful across machines only with synced clocks)."""
        return (self.recv_ts - self.header.capture_ts) * 1000.0

    @property
    def transport_ms(self) -> float:
        return (self.recv_ts - self.header.publish_ts) * 1000.0


@dataclass(frozen=True)
class SubscriberStats:
    received: int  # well-formed messages that arrived
    delivered: int  # returned by recv
    skipped: int  # replaced by a newer message before recv took them (latest mode)
    malformed: int  # messages that broke the wire format; skipped
    gaps: int  # sequence numbers never seen: messages the publisher or the network dropped
    last_error: str | None


@dataclass
class _Pending:
    frames: list[bytes]
    header: FrameHeader
    recv_ts: float


class Subscriber:
    """A SUB socket connected to one publisher, as a context manager.

    ``topics``: stream ids to receive (prefix match); None receives all. ``rcvhwm`` bounds the
    socket's own queue; in latest mode the background thread keeps it near empty.
    """

    def __init__(
        self,
        addr: str,
        *,
        topics: Sequence[str] | None = None,
        latest: bool = False,
        rcvhwm: int = 4,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = 256 * 1024 * 1024,
        curve_keys: str | os.PathLike[str] | None = None,
    ) -> None:
        if addr.startswith("zmq://"):
            addr = addr[len("zmq://") :]
        if "://" not in addr:
            raise ConfigError(
                f"subscriber address must look like tcp://HOST:PORT or ipc://PATH, got {addr!r}"
            )
        if "?" in addr:
            raise ConfigError(
                f"subscriber address {addr!r} has options ({addr[addr.index('?') :]}); a subscriber takes "
                "none: parts, quality and the rest are set on the publishing zmq:// sink"
            )
        if isinstance(topics, str):  # iterated, "front" would subscribe to the prefixes f, r, o, n, t
            raise ConfigError(
                f"topics must be a list of stream ids, got the string {topics!r}; use topics=[{topics!r}]"
            )
        if rcvhwm < 1:
            raise ConfigError(f"rcvhwm must be >= 1, got {rcvhwm}")
        self.addr = check_endpoint(addr, bind=False)
        self.latest = latest
        self.max_pixels = max_pixels
        self._ctx = zmq.Context()
        self._socket = self._ctx.socket(zmq.SUB)
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
            self._socket.setsockopt(zmq.MAXMSGSIZE, max_bytes)
            self._socket.setsockopt(zmq.TCP_KEEPALIVE, 1)
            self._socket.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S)
            self._socket.setsockopt(zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTERVAL_S)
            self._socket.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_COUNT)
            if curve_keys is not None:
                apply_client_keys(self._socket, curve_keys)
            for topic in topics if topics is not None else [""]:
                self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))
            self._socket.connect(addr)
        except zmq.ZMQError as exc:
            self._socket.close(linger=0)
            self._ctx.term()
            raise ConfigError(f"cannot subscribe to {addr}: {exc}") from None
        except BaseException:
            self._socket.close(linger=0)
            self._ctx.term()
            raise
        self._lock = threading.Condition()
        # recv without latest mode reads the socket on the caller's thread: one caller at a time (two
        # at once interleave the frames of different messages, or abort inside libzmq)
        self._socket_lock = threading.Lock()
        self._received = self._delivered = self._skipped = self._malformed = self._gaps = 0
        self._skipped_since_recv = 0
        self._last_error: str | None = None
        self._last_seq: dict[str, int] = {}
        self._classes: dict[str, ClassSet] = {}
        self._pending: _Pending | None = None
        self._closed = False
        self._receiving = 0  # recv calls polling the socket (non-latest mode)
        self._thread: threading.Thread | None = None
        if latest:
            self._thread = threading.Thread(target=self._drain, name=f"subscriber:{addr}", daemon=True)
            self._thread.start()

    # -- shared bookkeeping (called with self._lock held)

    def _malformed_locked(self, error: Exception) -> None:
        self._malformed += 1
        first = self._last_error is None
        self._last_error = f"{type(error).__name__}: {error}"
        if first:
            log.warning("subscriber %s: skipping a malformed message: %s", self.addr, error)

    def _accept_locked(self, frames: list[bytes]) -> _Pending | None:
        try:
            header = decode_frame_header(frames)
        except Exception as exc:  # whatever a peer sends must not stop the receiver
            self._malformed_locked(exc)
            return None
        self._received += 1
        last = self._last_seq.get(header.stream)
        if last is not None and header.seq > last + 1:
            self._gaps += header.seq - last - 1
        self._last_seq[header.stream] = header.seq  # a smaller seq: the publisher restarted
        if header.classes is not None:
            self._classes[header.stream] = header.classes
        return _Pending(frames, header, time.time())

    def _decode(self, pending: _Pending, skipped: int) -> Message | None:
        try:
            parts = decode_frame_parts(pending.header, pending.frames, max_pixels=self.max_pixels)
        except Exception as exc:  # e.g. a corrupt image part
            with self._lock:
                self._malformed_locked(exc)
            return None
        with self._lock:
            self._delivered += 1
            classes = pending.header.classes or self._classes.get(pending.header.stream)
        return Message(
            topic=pending.header.stream,
            header=pending.header,
            parts=parts,
            recv_ts=pending.recv_ts,
            classes=classes,
            skipped=skipped,
            raw_bytes=sum(len(f) for f in pending.frames),
        )

    # -- latest mode: the background thread

    def _drain(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        while not self._closed:
            try:
                if not poller.poll(50):
                    continue
                while True:
                    try:
                        frames = self._socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    with self._lock:
                        pending = self._accept_locked(frames)
                        if pending is None:
                            continue
                        if self._pending is not None:
                            self._skipped += 1
                            self._skipped_since_recv += 1
                        self._pending = pending
                        self._lock.notify_all()
            except zmq.ZMQError as exc:
                if self._closed:
                    return
                log.error("subscriber %s: receive failed: %s", self.addr, exc)
                time.sleep(0.05)

    # -- public API

    def recv(self, timeout: float | None = None) -> Message:
        """The next message (latest mode: the newest one); StreamTimeout after ``timeout`` seconds."""
        if self._closed:
            raise ConfigError(f"subscriber {self.addr} is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self.latest:
                with self._lock:
                    if self._pending is None:
                        self._lock.wait_for(lambda: self._pending is not None or self._closed, remaining)
                    pending, self._pending = self._pending, None
                    skipped, self._skipped_since_recv = self._skipped_since_recv, 0
            else:
                pending, skipped = self._recv_direct(remaining), 0
            if pending is not None:
                message = self._decode(pending, skipped)
                if message is not None:
                    return message
            if self._closed:
                raise ConfigError(f"subscriber {self.addr} was closed while waiting")
            if deadline is not None and time.monotonic() >= deadline:
                raise StreamTimeout(f"no message from {self.addr} within {timeout:.3g} s")

    def _recv_direct(self, remaining: float | None) -> _Pending | None:
        """Poll in short slices, so that close() from another thread ends the wait (sockets are not
        thread-safe: close() waits for this to return before it closes the socket)."""
        with self._lock:
            if self._closed:
                return None
            self._receiving += 1
        try:
            deadline = None if remaining is None else time.monotonic() + remaining
            while not self._closed:
                left = _POLL_SLICE_S if deadline is None else min(_POLL_SLICE_S, deadline - time.monotonic())
                with self._socket_lock:
                    if self._socket.poll(max(0, int(left * 1000)), zmq.POLLIN):
                        frames = self._socket.recv_multipart(zmq.NOBLOCK)
                        with self._lock:
                            return self._accept_locked(frames)
                if deadline is not None and time.monotonic() >= deadline:
                    return None
            return None
        except zmq.Again:
            return None
        finally:
            with self._lock:
                self._receiving -= 1
                self._lock.notify_all()

    @property
    def stats(self) -> SubscriberStats:
        with self._lock:
            return SubscriberStats(
                self._received, self._delivered, self._skipped, self._malformed, self._gaps, self._last_error
            )

    def close(self) -> None:
        if self._closed:
            return
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            self._lock.wait_for(lambda: self._receiving == 0, timeout=5.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._socket.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
