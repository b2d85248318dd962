"""Receiving published results: typed messages, gap and restart counting, and a latest-only mode.

``latest=True`` answers the slow-subscriber problem: a background thread drains the socket as fast
as messages arrive and keeps only the newest message *of each stream*, so a consumer that takes
50 ms per message always gets a fresh frame instead of working through a backlog, and a fast
stream cannot starve a slow one (``recv`` hands out the stream that has waited longest first).
(``ZMQ_CONFLATE`` cannot do this: it keeps the last *frame* and breaks multipart messages.) Only
the header is parsed on that thread; image parts are decoded in ``recv``, for the messages the
consumer actually takes.

Per-stream state (last seq, session, class set, the pending message) is kept for at most
``max_streams`` streams: stream ids come from the publisher, and a buggy or hostile one could
invent them without end. Past the limit the stream heard from least recently is forgotten (its
pending message is dropped and counted as skipped; if it comes back it is treated as new).
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import zmq

from ..data.labels import ClassSet
from ..errors import ConfigError, SourceError, StreamTimeout
from .endpoint import DEFAULT_PUB_ENDPOINT, endpoint_of, open_socket
from .protocol import (
    DEFAULT_MAX_PIXELS,
    INT_MAX,
    MAX_FRAME_MESSAGE_FRAMES,
    MAX_PARTS,
    SOCKOPT_INT_MAX,
    STREAM_ID_RULE,
    FrameHeader,
    check_int_option,
    check_label_values,
    decode_frame_header,
    decode_frame_parts,
    is_stream_id,
    recv_frames,
    too_many_frames,
)

log = logging.getLogger(__name__)
_POLL_SLICE_S = 0.05  # how soon a blocked recv notices close() from another thread
# How long close() waits for the drain thread or a recv to let go of the socket. Past it close()
# returns, and whichever of them is last to let go closes the socket (never under another thread).
_CLOSE_WAIT_S = 5.0
_DRAIN_BATCH = 256  # latest mode: messages taken per poll wake-up at most (see _drain_ready)
_FRAME_LAYOUT = f"[topic, header] and at most {MAX_PARTS} parts"
# A SUB socket never sends, so a TCP connection that died without being closed (the publisher's
# host lost power or rebooted, the network partitioned) would look alive forever and never be
# reconnected, even once the publisher is back. TCP keepalive probes it after KEEPALIVE_IDLE_S
# seconds without data and resets it when KEEPALIVE_COUNT probes, KEEPALIVE_INTERVAL_S apart, go
# unanswered (or at once when a rebooted host answers with a reset); libzmq then reconnects.
# (Not ZMTP heartbeats: with a full receive queue libzmq 4.3 then aborts, zeromq/libzmq#3937.)
KEEPALIVE_IDLE_S = 2
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_COUNT = 3
DEFAULT_MAX_STREAMS = 16


@dataclass(frozen=True, eq=False)
class Message:
    """One received result: the header, the decoded parts, and when it arrived.

    ``classes`` comes from this message's header or, when the header omits it (it is sent every
    N messages), from the last header of the same stream and the same publisher session that had
    it; None until the publisher (after a restart: the new one) has sent it.
    """

    topic: str
    header: FrameHeader
    parts: dict[str, np.ndarray]
    recv_ts: float  # wall clock, comparable with the header's capture_ts / publish_ts
    classes: ClassSet | None = None
    skipped: int = 0  # latest mode: this stream's messages replaced since recv last took one of it
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
    restarts: int = 0  # a stream's publisher restarted: a new session id, or its seq went back
    evicted: int = 0  # streams forgotten because more than max_streams were heard from
    streams: int = 0  # streams tracked now (at most max_streams)


@dataclass
class _StreamState:
    last_seq: int
    session: str | None
    classes: ClassSet | None
    # latest mode: messages replaced while the one recv took instead turned out malformed; they
    # are owed to the next message of this stream that recv hands out
    skipped_owed: int = 0


@dataclass
class _Pending:
    frames: list[bytes]
    header: FrameHeader
    recv_ts: float
    classes: ClassSet | None  # resolved on arrival, so a later restart cannot change it
    skipped: int = 0  # older messages of the same stream this one replaced (latest mode)


@dataclass(frozen=True)
class SubscriberOptions:
    """A ``Subscriber``'s options (its keyword arguments; see there), checked on creation: each
    that rtseg cannot use is a ConfigError naming it (a string rcvhwm raised a bare TypeError from
    a comparison, and max_pixels and latest were not checked at all). ``topics`` is kept as a
    tuple."""

    topics: tuple[str, ...] | None = None
    latest: bool = False
    rcvhwm: int = 4
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = 256 * 1024 * 1024
    max_streams: int = DEFAULT_MAX_STREAMS
    exact_topics: bool = False

    def __post_init__(self) -> None:
        topics = self.topics
        if isinstance(topics, (str, bytes)):  # iterated, "front" would be the prefixes f, r, o, n, t
            is_bytes = isinstance(topics, bytes)
            text = topics.decode("utf-8", "replace") if isinstance(topics, bytes) else topics
            raise ConfigError(
                f"topics must be a list of stream ids, got the {'bytes' if is_bytes else 'string'} "
                f"{topics!r}; use topics=[{text!r}]"
            )
        if topics is not None:
            if not isinstance(topics, Iterable):
                raise ConfigError(f"topics must be None or a list of stream ids, got {topics!r}")
            # a tuple: frozen options stay hashable, and a generator is not used up by these checks
            topics = tuple(topics)
            object.__setattr__(self, "topics", topics)
        for name in ("latest", "exact_topics"):
            value = getattr(self, name)
            if not isinstance(value, bool):  # "no" or a NumPy bool would pass as true or false
                raise ConfigError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
        for i, topic in enumerate(topics or ()):
            if not isinstance(topic, str):
                raise ConfigError(f"topics[{i}] must be a str (a stream id prefix), got {topic!r}")
            if self.exact_topics and not is_stream_id(topic):
                raise ConfigError(
                    f"topics[{i}] must be a stream id ({STREAM_ID_RULE}) with exact_topics, got {topic!r}"
                )
        check_int_option("rcvhwm", self.rcvhwm, 1, SOCKOPT_INT_MAX)  # ZMQ_RCVHWM is a C int
        check_int_option("max_pixels", self.max_pixels, 1)
        check_int_option("max_bytes", self.max_bytes, 1, INT_MAX)  # ZMQ_MAXMSGSIZE is an int64
        check_int_option("max_streams", self.max_streams, 1)


class Subscriber:
    """A SUB socket connected to one publisher, as a context manager.

    ``endpoint``: the publisher's, TRANSPORT://ADDRESS with or without ``zmq://`` in front (as
    ``rtseg view`` takes it); by default the default ``Publisher``'s.
    ``topics``: stream ids to receive (prefix match, as ZeroMQ subscribes: "cam1" also receives
    "cam10"); None receives all. ``exact_topics``: receive only the streams whose id is one of
    ``topics`` exactly; the others are dropped unparsed, as if not subscribed. ``rcvhwm`` bounds the
    socket's own queue; in latest mode the background thread keeps it near empty. ``max_streams``
    bounds the streams tracked at once (see the module docstring). ``max_bytes`` is
    ZMQ_MAXMSGSIZE: it caps each frame, not a message, and libzmq buffers a whole message (any
    number of frames) before it can be read, so a hostile publisher can make one message take its
    frame count x ``max_bytes``; connect only to publishers you trust (or with ``curve_keys``).
    The options are checked as a ``SubscriberOptions``, kept as ``options``: one rtseg cannot use
    is a ConfigError naming it.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_PUB_ENDPOINT,
        *,
        topics: Sequence[str] | None = None,
        latest: bool = False,
        rcvhwm: int = 4,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = 256 * 1024 * 1024,
        curve_keys: str | os.PathLike[str] | None = None,
        max_streams: int = DEFAULT_MAX_STREAMS,
        exact_topics: bool = False,
    ) -> None:
        endpoint = endpoint_of(
            endpoint,
            bind=False,
            who="a subscriber",
            options_hint="parts, quality and the rest are set on the publishing zmq:// sink",
        )
        self.options = SubscriberOptions(
            topics=topics,  # type: ignore[arg-type]  # any sequence; kept as a tuple
            latest=latest,
            rcvhwm=rcvhwm,
            max_pixels=max_pixels,
            max_bytes=max_bytes,
            max_streams=max_streams,
            exact_topics=exact_topics,
        )
        topics = self.options.topics
        # exact_topics: the topic frames (UTF-8 stream ids) to keep; None keeps what SUBSCRIBE lets in
        self._exact: frozenset[bytes] | None = (
            frozenset(t.encode("utf-8") for t in topics) if exact_topics and topics is not None else None
        )
        self.endpoint = endpoint
        self._ctx = zmq.Context()
        # An encrypted publisher and a plain subscriber (or the wrong keys) only fail their
        # handshake: to the subscriber that looks like silence.
        self._timeout_hint = (
            " (nothing published, or the publisher refused this subscriber's CURVE keys)"
            if curve_keys is not None
            else " (nothing published, or the publisher requires CurveZMQ keys: curve_keys=, "
            "rtseg view's --curve-keys)"
        )
        self._socket, _ = open_socket(
            self._ctx,
            zmq.SUB,
            endpoint,
            bind=False,
            doing="subscribe to",
            options=[
                (zmq.RCVHWM, int(rcvhwm)),
                (zmq.MAXMSGSIZE, int(max_bytes)),
                (zmq.TCP_KEEPALIVE, 1),
                (zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S),
                (zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTERVAL_S),
                (zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_COUNT),
                *((zmq.SUBSCRIBE, t.encode("utf-8")) for t in (topics if topics is not None else [""])),
            ],
            curve_keys=curve_keys,
            term_on_failure=True,
        )
        self._lock = threading.Condition()
        # recv without latest mode reads the socket on the caller's thread: one caller at a time (two
        # at once interleave the frames of different messages, or abort inside libzmq)
        self._socket_lock = threading.Lock()
        self._received = self._delivered = self._skipped = self._malformed = self._gaps = 0
        self._malformed_before_delivery = 0  # self._malformed when recv last handed a message out
        self._restarts = self._evicted = 0
        self._last_error: str | None = None
        # least recently heard stream first; at most max_streams entries
        self._streams: OrderedDict[str, _StreamState] = OrderedDict()
        # latest mode: the newest message of each stream, in the order the streams started waiting
        self._pending: dict[str, _Pending] = {}
        self._closed = False
        self._receiving = 0  # recv calls polling the socket (non-latest mode)
        self._draining = latest  # the drain thread may still touch the socket
        self._orphaned = False  # close() gave up waiting: the last user of the socket closes it
        self._failure: BaseException | None = None  # what ended the drain thread
        self._thread: threading.Thread | None = None
        if latest:
            # The thread holds the subscriber only by a weak reference (a bound method kept it, its
            # socket and its context alive for ever once dropped without close()): when it is
            # collected, the thread ends within a poll and closes the socket itself.
            self._thread = threading.Thread(
                target=_drain,
                args=(weakref.ref(self), self._socket, self._ctx, endpoint),
                name=f"subscriber:{endpoint}",
                daemon=True,
            )
            self._thread.start()

    # -- shared bookkeeping (called with self._lock held)

    def _malformed_locked(self, error: Exception) -> None:
        self._malformed += 1
        first = self._last_error is None
        self._last_error = f"{type(error).__name__}: {error}"
        if first:
            log.warning("subscriber %s: skipping a malformed message: %s", self.endpoint, error)

    def _receive(self) -> tuple[list[bytes], int]:
        """One message from the socket, at most MAX_FRAME_MESSAGE_FRAMES frames of it kept."""
        return recv_frames(self._socket, MAX_FRAME_MESSAGE_FRAMES, flags=zmq.NOBLOCK)

    def _accept_locked(self, frames: list[bytes], count: int) -> _Pending | None:
        if self._exact is not None and frames[0] not in self._exact:
            return None  # a longer stream id that the prefix subscription let in: not asked for
        try:
            if count > len(frames):
                raise too_many_frames(count, MAX_FRAME_MESSAGE_FRAMES, _FRAME_LAYOUT)
            header = decode_frame_header(frames, max_pixels=self.options.max_pixels)
        except Exception as exc:  # whatever a peer sends must not stop the receiver
            self._malformed_locked(exc)
            return None
        self._received += 1
        stream = header.stream
        state = self._streams.get(stream)
        if state is None:
            if len(self._streams) >= self.options.max_streams:
                self._evict_locked()
            state = self._streams[stream] = _StreamState(header.seq, header.session, header.classes)
        else:
            self._streams.move_to_end(stream)
            if header.session != state.session or header.seq <= state.last_seq:
                # A new publisher: its class set may differ and its seq counts from 0 again, so
                # neither the cached classes nor the seq difference mean anything any more.
                self._restart_locked(stream, state, header)
                state.session, state.classes = header.session, None
            elif header.seq > state.last_seq + 1:
                self._gaps += header.seq - state.last_seq - 1
            state.last_seq = header.seq
            if header.classes is not None:
                state.classes = header.classes
        return _Pending(frames, header, time.time(), state.classes)

    def _owe_skipped_locked(self, pending: _Pending) -> None:
        """recv took ``pending`` but it did not decode: the messages it had replaced were still
        lost, so the next message of its stream reports them (Message.skipped)."""
        if not pending.skipped:
            return
        stream = pending.header.stream
        newer = self._pending.get(stream)
        if newer is not None:
            newer.skipped += pending.skipped
        else:
            state = self._streams.get(stream)
            if state is not None:  # an evicted stream is forgotten with its counts
                state.skipped_owed += pending.skipped

    def _restart_locked(self, stream: str, state: _StreamState, header: FrameHeader) -> None:
        self._restarts += 1
        level = logging.INFO if self._restarts == 1 else logging.DEBUG  # a flapping peer must not flood
        log.log(
            level,
            "subscriber %s: stream %r restarted (session %s -> %s, seq %d -> %d)",
            self.endpoint,
            stream,
            state.session,
            header.session,
            state.last_seq,
            header.seq,
        )

    def _evict_locked(self) -> None:
        stream, _ = self._streams.popitem(last=False)
        self._evicted += 1
        if self._pending.pop(stream, None) is not None:
            self._skipped += 1
        if self._evicted == 1:
            log.warning(
                "subscriber %s: more than max_streams=%d streams; forgetting the least recent, %r",
                self.endpoint,
                self.options.max_streams,
                stream,
            )

    def _decode(self, pending: _Pending) -> Message | None:
        try:
            parts = decode_frame_parts(pending.header, pending.frames, max_pixels=self.options.max_pixels)
            if pending.classes is not None and "labels" in parts:
                # Once the class set is known: ids it has no name or colour for are a broken peer.
                check_label_values(parts["labels"], pending.classes)
        except Exception as exc:  # e.g. a corrupt image part
            with self._lock:
                self._malformed_locked(exc)
                if self.options.latest:
                    self._owe_skipped_locked(pending)
            return None
        with self._lock:
            self._delivered += 1
            self._malformed_before_delivery = self._malformed
        return Message(
            topic=pending.header.stream,
            header=pending.header,
            parts=parts,
            recv_ts=pending.recv_ts,
            classes=pending.classes,
            skipped=pending.skipped,
            raw_bytes=sum(len(f) for f in pending.frames),
        )

    # -- latest mode: the background thread (see _drain)

    def _drain_ready(self) -> None:
        """What the socket holds now (the poll said it had some), newest per stream kept: at most
        _DRAIN_BATCH messages, so that under a flood the thread still lets go of the subscriber
        between polls and one dropped without close() is collected."""
        for _ in range(_DRAIN_BATCH):
            if self._closed:
                break
            try:
                frames, count = self._receive()
            except zmq.Again:
                break
            with self._lock:
                pending = self._accept_locked(frames, count)
                if pending is None:
                    continue
                stream = pending.header.stream
                replaced = self._pending.get(stream)
                if replaced is not None:
                    self._skipped += 1
                    pending.skipped = replaced.skipped + 1
                else:
                    state = self._streams[stream]
                    pending.skipped, state.skipped_owed = state.skipped_owed, 0
                # an existing key keeps its place: the stream still waits since its first
                self._pending[stream] = pending
                self._lock.notify_all()

    def _drain_failed(self, exc: Exception) -> None:
        log.error("subscriber %s: the receiving thread failed", self.endpoint, exc_info=exc)
        with self._lock:
            self._failure = exc
            self._last_error = f"{type(exc).__name__}: {exc}"

    def _drain_ended(self) -> None:
        with self._lock:
            self._draining = False
            self._lock.notify_all()
            release = self._orphaned and self._receiving == 0
        if release:
            self._release_socket()

    # -- public API

    def recv(self, timeout: float | None = None) -> Message:
        """The next message (latest mode: the newest one of the stream that has waited longest);
        StreamTimeout after ``timeout`` seconds (None, inf or more than threading.TIMEOUT_MAX, some
        centuries: no limit)."""
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, numbers.Real)  # NumPy numbers too, as Client takes them
            or math.isnan(timeout)
            or timeout < 0
        ):
            # NaN never compares past a deadline (recv hung); a string failed deep inside
            raise ConfigError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
        if timeout is not None:
            timeout = float(timeout)
        if timeout is not None and timeout > threading.TIMEOUT_MAX:  # inf, or centuries: no limit
            timeout = None  # (a Condition's wait raised OverflowError past TIMEOUT_MAX)
        if self._closed:
            raise ConfigError(f"subscriber {self.endpoint} is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self.options.latest:
                with self._lock:
                    if not self._pending:
                        self._lock.wait_for(
                            lambda: bool(self._pending) or self._closed or self._failure is not None,
                            remaining,
                        )
                    pending = self._pending.pop(next(iter(self._pending))) if self._pending else None
                    failure = self._failure
                if pending is None and failure is not None and not self._closed:
                    raise SourceError(
                        f"subscriber {self.endpoint}: its receiving thread failed "
                        f"({type(failure).__name__}: {failure}); no more messages will arrive: "
                        "close this subscriber and open a new one"
                    ) from failure
            else:
                pending = self._recv_direct(remaining)
            if pending is not None:
                message = self._decode(pending)
                if message is not None:
                    return message
            if self._closed:
                raise ConfigError(f"subscriber {self.endpoint} was closed while waiting")
            if deadline is not None and time.monotonic() >= deadline:
                raise self._timeout_error(timeout)  # type: ignore[arg-type]

    def _timeout_error(self, timeout: float) -> StreamTimeout:
        """What recv raises when nothing usable came: messages that arrived but were all malformed
        are not 'nothing published' (a publisher speaking another version, or sending too-large
        parts, looked like silence)."""
        with self._lock:
            malformed = self._malformed - self._malformed_before_delivery
            last = self._last_error
        if malformed:
            since = "since the last message handed out" if self._delivered else "since the subscriber opened"
            return StreamTimeout(
                f"no usable message from {self.endpoint} within {timeout:.3g} s: {malformed} message(s) "
                f"arrived {since} and were all malformed, so skipped (the last: {last})"
            )
        return StreamTimeout(f"no message from {self.endpoint} within {timeout:.3g} s{self._timeout_hint}")

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
                        frames, count = self._receive()
                        with self._lock:
                            return self._accept_locked(frames, count)
                if deadline is not None and time.monotonic() >= deadline:
                    return None
            return None
        except zmq.Again:
            return None
        finally:
            with self._lock:
                self._receiving -= 1
                self._lock.notify_all()
                release = self._orphaned and self._receiving == 0 and not self._draining
            if release:
                self._release_socket()

    @property
    def stats(self) -> SubscriberStats:
        with self._lock:
            return SubscriberStats(
                self._received,
                self._delivered,
                self._skipped,
                self._malformed,
                self._gaps,
                self._last_error,
                self._restarts,
                self._evicted,
                len(self._streams),
            )

    def close(self) -> None:
        """Stop receiving and close the socket, waiting at most ``_CLOSE_WAIT_S`` for the drain
        thread and any recv to let go of it. zmq sockets are not thread-safe, so if one has not let
        go by then the socket is left to it: it closes the socket as it returns."""
        with self._lock:  # checked under the lock: two threads closing at once close the socket once
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()
            idle = self._lock.wait_for(
                lambda: self._receiving == 0 and not self._draining, timeout=_CLOSE_WAIT_S
            )
            if not idle:
                self._orphaned = True
                log.warning(
                    "subscriber %s: the socket is still in use %g s after close(); it will be "
                    "closed when the thread using it returns",
                    self.endpoint,
                    _CLOSE_WAIT_S,
                )
                return
        self._release_socket()

    def _release_socket(self) -> None:
        """Called once, by close() or by the last thread to let go of the socket after it."""
        self._socket.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drain(
    sub_ref: weakref.ReferenceType[Subscriber], socket: zmq.Socket, ctx: zmq.Context, endpoint: str
) -> None:
    """The latest-mode thread. It holds the subscriber only while it takes messages (resolved once
    per poll wake-up, not per message), so one dropped without close() is collected; the thread
    then ends and, the socket's only user left, closes it and its context. Whatever ends the thread
    otherwise is recorded for recv to raise: a thread that died silently left recv waiting for
    messages that would never come."""
    sub: Subscriber | None = None
    try:
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        while True:
            try:
                ready = poller.poll(int(_POLL_SLICE_S * 1000))
                sub = sub_ref()
                if sub is None or sub._closed:
                    break
                if ready:
                    sub._drain_ready()
            except zmq.ZMQError as exc:
                sub = sub_ref()
                if sub is None or sub._closed:
                    break
                log.error("subscriber %s: receive failed: %s", endpoint, exc)
                time.sleep(_POLL_SLICE_S)
            sub = None
    except Exception as exc:
        sub = sub_ref() if sub is None else sub
        if sub is not None:
            sub._drain_failed(exc)
        else:
            log.error("subscriber %s: the receiving thread failed", endpoint, exc_info=exc)
    finally:
        sub = sub_ref() if sub is None else sub
        if sub is not None:
            sub._drain_ended()  # close() (or this, if close() stopped waiting) closes the socket
        else:  # dropped without close(): nothing else can reach the socket any more
            socket.close(linger=0)
            ctx.term()
