"""The request/reply segmentation server: one ROUTER socket, a worker pool, state per stream.

One thread owns the ROUTER socket: it receives requests (ROUTER fair-queues them across clients),
hands them to ``workers`` threads through a bounded queue, and sends back the replies the workers
return over an inproc socket, each with the envelope it came with, so a reply can only go to the
peer that asked. When the queue is full the request is answered at once with ``busy`` rather
than letting latency grow. Every request gets exactly one reply; nothing a client sends can stop
the loop (see ``ErrorCode`` for what is refused and docs/wire-format.md for the messages).

More workers pay only when there are idle cores (or a backend that leaves the CPU free): on a
busy 2-core machine, 8 clients x 50 requests to ESPNet at 64x48 ran at 153 requests/s (p50 38 ms,
p99 129 ms) with one worker and 134/s (p50 50 ms, p99 162 ms) with two, hence the default of one.

A request may name a stream: the server then keeps a scheduler for that stream (rtseg.schedule;
clockwork every 4 frames with the flow warp unless the server is given another) that caches its
deep features and decides its keyframes; a request can also ask for a keyframe. Streams are opened with
``start: true``, expire after ``stream_ttl_s`` idle and are evicted least-recently-used beyond
``max_streams``; using one the server does not hold gets
``unknown_stream``, which tells the client its scheduler state is gone (for example after a
restart) and it must start the stream again.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import zmq

from ..data.preprocess import cv2_interpolation
from ..engine.base import Engine
from ..errors import ConfigError
from ..overlay.annotate import OverlayStyle, annotate
from ..result import SegResult, labels_at
from ..schedule import DEFAULT_INTERVAL, Every, Scheduler, make_scheduler
from .endpoint import DEFAULT_SERVER_ENDPOINT, endpoint_of, open_socket
from .protocol import (
    DEFAULT_MAX_PIXELS,
    INT_MAX,
    MAX_HEADER_BYTES,
    PROTOCOL,
    ErrorCode,
    SegmentRequest,
    WireError,
    check_encodable,
    check_protocol,
    decode_array,
    dumps,
    encode_array,
    error_reply,
    load_json_object,
    parse_request,
    recv_frames,
    request_id,
)

log = logging.getLogger(__name__)

_instances = itertools.count()
# The routing frames before a request's empty delimiter: the ROUTER's identity of the peer, and one
# more for each ROUTER-DEALER proxy (zmq_proxy) the request went through. More hops than this are
# refused (malformed_multipart): a real chain of brokers is a few long.
MAX_HOPS = 8
# the envelope (MAX_HOPS routing frames, the empty delimiter), header, image: a request never needs more
_MAX_REQUEST_FRAMES = MAX_HOPS + 3
# The smallest usable max_bytes: a header as large as the protocol allows plus a small image (a
# 160x120 raw BGR frame). max_bytes is also ZMQ_MAXMSGSIZE, so below this libzmq drops requests
# that are valid and small before the server sees them, and a server could answer none.
MIN_MAX_BYTES = MAX_HEADER_BYTES + 160 * 120 * 3
# On close, the longest the replies already handed to the ROUTER get to leave (ZMQ_LINGER), within
# what is left of drain_s: a send only queues a reply, and closing with linger 0 discarded the last
# ones of a drain (a few MB take milliseconds to write) although they were counted as answered.
REPLY_LINGER_S = 1.0
# The refusal of a request that reaches a stopping server (``busy``: retry elsewhere or later).
CLOSING = "the server is shutting down; retry (a restarted or another server)"


def _default_scheduler() -> Scheduler:
    # as rtseg serve's default and docs/wire-format.md say: clockwork with the flow warp
    return make_scheduler("clockwork", interval=DEFAULT_INTERVAL)


def _scheduler_factory(scheduler: str | Callable[[], Scheduler] | None) -> Callable[[], Scheduler]:
    """Server's ``scheduler``: a name (rtseg.schedule.make_scheduler, its default options) or a
    factory called once per stream; each stream needs a scheduler of its own."""
    if scheduler is None:
        return _default_scheduler
    if isinstance(scheduler, str):
        name = scheduler
        make_scheduler(name).close()  # an unknown name fails here
        return lambda: make_scheduler(name)
    if isinstance(scheduler, Scheduler):
        raise ConfigError(
            f"scheduler must be a name or a factory, got a {type(scheduler).__name__} instance: every "
            "stream needs its own (it caches that stream's features); pass e.g. "
            f"lambda: {type(scheduler).__name__}(...)"
        )
    if not callable(scheduler):
        raise ConfigError(
            "scheduler must be None, a scheduler name or a zero-argument factory returning a "
            f"Scheduler, got {scheduler!r}"
        )
    return scheduler


def stream_owner(envelope: list[bytes]) -> tuple[bytes, ...]:
    """Whose streams a request's are. Direct: the peer's connection (its ROUTER identity). Behind
    proxies: the identities the proxies gave the client, without the first, which names only the
    last proxy's connection to this server; all its clients share that one, and when ZMQ_MAXMSGSIZE
    drops it (one client's oversized frame) it comes back renewed, which reset every client's
    streams (``unknown_stream``) instead of the offender's."""
    routing = [frame for frame in envelope if frame]
    return tuple(routing[1:]) if len(routing) > 1 else tuple(routing)


def _split_envelope(frames: list[zmq.Frame], count: int) -> tuple[list[bytes], list[zmq.Frame], str | None]:
    """[routing frames..., empty delimiter, header, image] -> (envelope, body, why it is malformed).

    ``frames`` are the first frames of a message of ``count`` (``recv_frames``). The envelope is
    everything up to and including the first empty frame: the ROUTER's identity of the peer, then
    the identities each proxy (a ROUTER-DEALER zmq_proxy) added, then the REQ socket's delimiter.
    The reply goes back on the whole envelope, so each proxy can route it on. A DEALER that sends
    no delimiter (no empty frame in the message at all) gets its reply without one, as before.
    More than ``MAX_HOPS`` routing frames before the delimiter (or no delimiter among them, in a
    message longer than that) is malformed; the refusal can go only to the peer itself."""
    for i in range(1, min(len(frames), MAX_HOPS + 1)):
        if len(frames[i]) == 0:
            return [f.bytes for f in frames[: i + 1]], frames[i + 1 :], None
        if frames[i].bytes[:1] == b"{":
            # a header before any empty frame: a DEALER without the delimiter, whose empty frame
            # further on is a bad body (a routing identity is binary: libzmq's start with a 0 byte)
            return [frames[0].bytes], frames[1:], None
    if count <= MAX_HOPS + 1:  # every frame was read, none empty: a DEALER without the delimiter
        return [frames[0].bytes], frames[1:], None
    return (
        [frames[0].bytes],
        [],
        f"no empty delimiter frame within the first {MAX_HOPS + 1} frames: a request is at most "
        f"{MAX_HOPS} routing frames (the peer's identity and one per proxy), an empty frame, then "
        "[header JSON, image bytes]",
    )


def _check_reply_encodable(request: SegmentRequest, shape: tuple[int, ...]) -> None:
    """The parts a reply draws at the request image's size must fit their encoding: refused as
    ``too_large`` before the model runs, not as an encoder failure (internal_error) after it."""
    if request.overlay:  # always JPEG, drawn on the request image
        check_encodable(shape, "jpeg", "reply.overlay (drawn at the request image's size)")
    if request.size == "input":  # otherwise the labels are at the model's output size
        check_encodable(shape, request.labels, "reply.labels with size 'input'")


def _elapsed(timings: dict[str, float], started: float) -> dict[str, float]:
    out = {k: round(v, 3) for k, v in timings.items()}
    out["total"] = round((time.perf_counter() - started) * 1000 + timings.get("queue", 0.0), 3)
    return out


@dataclass(frozen=True)
class ServerLimits:
    """What one request may cost. ``max_bytes`` also sets ZMQ_MAXMSGSIZE: libzmq drops the
    connection of a peer that sends a single frame larger than that, before it is buffered, so
    such a request gets no reply (its client times out); a request whose frames together exceed
    ``max_bytes`` gets a ``too_large`` reply; it must be at least ``MIN_MAX_BYTES``.

    ZMQ_MAXMSGSIZE caps each frame, not the message, and libzmq buffers a whole multipart message
    (any number of frames) before the first frame can be read: a peer can make one request take
    its frame count x ``max_bytes`` of memory. Admit only trusted peers (``curve_keys``)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = 64 * 1024 * 1024
    max_streams: int = 64
    stream_ttl_s: float = 300.0
    queue_size: int = 32
    drain_s: float = 5.0  # on stop: how long queued and running requests get to be answered

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_bytes", "max_streams", "queue_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"ServerLimits.{name} must be a positive integer, got {value!r}")
        if not MIN_MAX_BYTES <= self.max_bytes <= INT_MAX:  # ZMQ_MAXMSGSIZE is an int64
            raise ConfigError(
                f"ServerLimits.max_bytes must be in {MIN_MAX_BYTES}..2**63-1 (at least a "
                f"{MAX_HEADER_BYTES}-byte header plus a small image), got {self.max_bytes!r}"
            )
        if not self.stream_ttl_s > 0:
            raise ConfigError(f"ServerLimits.stream_ttl_s must be positive, got {self.stream_ttl_s!r}")
        if not 0 <= self.drain_s < float("inf"):
            raise ConfigError(f"ServerLimits.drain_s must be finite and >= 0, got {self.drain_s!r}")


@dataclass(frozen=True)
class ServerStats:
    received: int
    ok: int
    errors: Mapping[str, int]
    undeliverable: int  # replies whose client had gone away
    streams: int


class _Stream:
    """One client sequence: its own scheduler (deep-feature cache and keyframe decisions)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.lock = threading.Lock()
        self.scheduler = scheduler
        self.last_used = time.monotonic()


def _close_scheduler(stream_id: str, state: _Stream, why: str) -> None:
    """Close a stream's scheduler; a failure is logged, not raised. Streams are closed on the socket
    thread (expiry) and in other streams' requests (restart, eviction): AsyncAdaptive.close() raises
    a deep job's failure, and that must neither end the socket thread nor fail an unrelated
    request."""
    try:
        state.scheduler.close()
    except Exception:
        log.exception("stream %r (%s): its scheduler failed to close", stream_id, why)


class _Streams:
    """The open streams, each a client's own: keyed by the client's connection (``stream_owner``:
    the ROUTER identity, and behind a proxy the proxy's identity of the client) and the
    stream id, so two clients that both call their camera "cam0" do not restart or keyframe each
    other's stream, nor get labels warped from the other's frames, through a proxy too."""

    def __init__(self, max_streams: int, ttl_s: float, scheduler: Callable[[], Scheduler]) -> None:
        self._max = max_streams
        self._ttl = ttl_s
        self._new = scheduler
        self._table: OrderedDict[tuple[tuple[bytes, ...], str], _Stream] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, client: tuple[bytes, ...], stream_id: str, *, start: bool) -> _Stream:
        key = (client, stream_id)
        with self._lock:
            if start:
                state = _Stream(self._new())
                old = self._table.pop(key, None)
                if old is not None:
                    _close_scheduler(stream_id, old, "started again")
                self._table[key] = state
                while len(self._table) > self._max:
                    (_, evicted), gone = self._table.popitem(last=False)
                    _close_scheduler(evicted, gone, "evicted")
                    log.info("stream %r evicted: more than %d streams open", evicted, self._max)
            else:
                found = self._table.get(key)
                if found is None:
                    raise WireError(
                        ErrorCode.UNKNOWN_STREAM,
                        f"stream {stream_id!r} is not open on this server (never started, idle for "
                        f"more than {self._ttl:g} s, evicted, or the server restarted); "
                        "send start: true to open it",
                    )
                state = found
            self._table.move_to_end(key)
            state.last_used = time.monotonic()
            return state

    def expire(self) -> None:
        cutoff = time.monotonic() - self._ttl
        with self._lock:
            for key in [k for k, st in self._table.items() if st.last_used < cutoff]:
                _close_scheduler(key[1], self._table.pop(key), f"idle for more than {self._ttl:g} s")

    def clear(self) -> None:
        with self._lock:
            for (_, sid), state in self._table.items():
                _close_scheduler(sid, state, "server closing")
            self._table.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)


@dataclass
class _Job:
    envelope: list[bytes]
    body: list[zmq.Frame]
    received: float = field(default_factory=time.perf_counter)


class Server:
    """Segments images sent by ``Client`` (or any peer speaking rtseg/1) with one engine.

    ``scheduler`` makes each stream's scheduler: a name (``rtseg.schedule.make_scheduler`` with its
    defaults, as ``rtseg serve --scheduler``) or a zero-argument factory such as
    ``lambda: Clockwork(8)``; not a Scheduler instance, since every stream needs its own.
    ``bind``: the endpoint to bind, TRANSPORT://ADDRESS with or without ``zmq://`` in front; a port
    in use (or an address no interface has) is a ConfigError naming it, as for a ``Publisher``."""

    def __init__(
        self,
        engine: Engine,
        *,
        bind: str = DEFAULT_SERVER_ENDPOINT,
        workers: int = 1,
        scheduler: str | Callable[[], Scheduler] | None = None,
        limits: ServerLimits | None = None,
        curve_keys: str | os.PathLike[str] | None = None,
        style: OverlayStyle | None = None,
    ) -> None:
        if not isinstance(engine, Engine):  # else it served, and every request failed
            raise ConfigError(
                "engine must be an rtseg Engine (from rtseg.engine.load(...), or a Segmenter's "
                f".engine), got {type(engine).__name__}"
            )
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        bind = endpoint_of(
            bind,
            bind=True,
            who="a server",
            name="bind",
            options_hint="its limits go in ServerLimits",
            example=DEFAULT_SERVER_ENDPOINT,
        )
        new_scheduler = _scheduler_factory(scheduler)
        probe = new_scheduler()
        try:
            if not isinstance(probe, Scheduler):
                raise ConfigError(
                    f"scheduler must return a Scheduler (rtseg.schedule), got {type(probe).__name__}"
                )
            probe.check(engine)  # a stream's scheduler that cannot run fails now, not per request
        finally:
            if isinstance(probe, Scheduler):
                probe.close()
        self.engine = engine
        self.workers = workers
        self.limits = limits or ServerLimits()
        self.style = style or OverlayStyle()
        self._streams = _Streams(self.limits.max_streams, self.limits.stream_ttl_s, new_scheduler)
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=self.limits.queue_size)
        self._stop = threading.Event()
        self._stats_lock = threading.Lock()
        self._received = self._ok = self._undeliverable = 0
        self._outstanding = 0  # requests queued or being handled, not yet answered (loop thread only)
        self._errors: dict[str, int] = {}
        self._ctx = zmq.Context()
        self._inproc = f"inproc://rtseg-server-{os.getpid()}-{next(_instances)}"
        self._router, self._curve = open_socket(
            self._ctx,
            zmq.ROUTER,
            bind,
            bind=True,
            doing="serve on",
            options=[(zmq.MAXMSGSIZE, self.limits.max_bytes), (zmq.ROUTER_MANDATORY, 1)],
            curve_keys=curve_keys,
            term_on_failure=True,
        )
        try:
            self._results, _ = open_socket(self._ctx, zmq.PULL, self._inproc, bind=True, doing="serve on")
        except BaseException:
            self._router.close(linger=0)
            if self._curve is not None:
                self._curve.close()
            self._ctx.term()
            raise
        self.endpoint: str = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._threads: list[threading.Thread] = []
        # The thread that runs the loop (start()'s own, or serve_forever()'s caller), and set once
        # the loop has drained: close() from another thread waits on it before closing the sockets.
        self._loop_thread: threading.Thread | None = None
        self._loop_done = threading.Event()
        self._closed_done = threading.Event()  # the first close() has finished: the port is free
        self._lifecycle_lock = threading.Lock()
        self._closed = False
        self._workers_lock = threading.Lock()
        self._live_workers = 0
        self._orphaned = False  # close() gave up on a stuck worker: the last one out finishes closing
        self._drain_deadline: float | None = None  # set by _drain: when its drain_s runs out

    # ------------------------------------------------------------------ lifecycle

    def _start_workers(self) -> None:
        for i in range(self.workers):
            with self._workers_lock:
                self._live_workers += 1
            t = threading.Thread(target=self._work, name=f"rtseg-serve-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _claim_loop(self, thread: threading.Thread) -> None:
        with self._lifecycle_lock:
            if self._closed:
                raise ConfigError("this server is closed; make a new Server to serve again")
            if self._loop_thread is not None:
                raise ConfigError("this server was already started")
            self._loop_thread = thread

    def start(self) -> Server:
        """Serve on a background thread (for embedding and tests); ``close()`` stops it."""
        loop = threading.Thread(target=self._loop, name="rtseg-serve-loop", daemon=True)
        self._claim_loop(loop)
        try:
            self._start_workers()
        except BaseException:
            self._loop_done.set()  # no loop will run: close() must not wait for one
            raise
        loop.start()
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until ``stop()`` or ``close()`` (from a signal handler or another
        thread); ``close()`` from another thread waits for the drain, as with ``start()``. When it
        returns the server is closed and its port free."""
        self._claim_loop(threading.current_thread())
        try:
            self._start_workers()
            self._loop()
        finally:
            self._loop_done.set()
            self.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Stop serving. Waits about ``drain_s`` for queued and running requests, then returns even
        if a worker is still stuck in the backend: that worker finishes closing when it returns.
        Replies already sent get what is left of ``drain_s``, at most ``REPLY_LINGER_S``, to reach
        their clients; one whose client is not reading by then is lost. Requests that arrive from
        the stop until the socket closes are refused as ``busy`` (the server is shutting down)."""
        with self._lifecycle_lock:
            serving = self._loop_thread
            if serving is threading.current_thread() and not self._loop_done.is_set():
                # A signal handler that interrupted this thread's own serve_forever(): closing the
                # sockets under its loop ended it with a ZMQError. The loop drains and closes.
                self._stop.set()
                return
            first, self._closed = not self._closed, True
        if not first:  # closing already (serve_forever's own close after another thread's)
            self._closed_done.wait()
            return
        try:
            self._close(serving)
        finally:
            self._closed_done.set()

    def _close(self, serving: threading.Thread | None) -> None:
        deadline = time.monotonic() + self.limits.drain_s
        self._stop.set()
        # Wait for the loop's drain, not for its thread to end: serve_forever()'s caller may be the
        # main thread, which goes on after serve_forever() returns.
        if serving is not None and serving is not threading.current_thread():
            self._loop_done.wait()
        # The drain's own budget when it ran (serve_forever drains before it calls close()).
        budget_end = deadline if self._drain_deadline is None else self._drain_deadline
        linger_ms = int(1000 * min(REPLY_LINGER_S, max(0.0, budget_end - time.monotonic())))
        # Accepted requests still queued when the drain ran out (or with drain_s 0) will not run:
        # refused, not dropped unanswered. A worker may take one meanwhile; each goes to one side.
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._refuse(job.envelope, ErrorCode.BUSY, CLOSING, job.body[0] if job.body else None)
        # What arrived after the drain (or on a server never started) is refused, not dropped
        # unanswered (its client waited out its timeout, told the server was down or overloaded):
        # only a request that arrives between this last read and the close below gets no reply.
        self._refuse_arrivals()
        # Unbind first, so a new server can take the port while workers finish their last request;
        # the listener closes at once, the connections linger until their replies are written.
        self._router.close(linger=linger_ms)
        self._results.close(linger=0)
        for _ in self._threads:
            self._jobs.put(None)
        until = max(deadline, time.monotonic() + 0.5)  # a little for workers that were idle
        for t in self._threads:  # a drain_s of centuries is no limit (join overflows past TIMEOUT_MAX)
            t.join(min(threading.TIMEOUT_MAX, max(0.0, until - time.monotonic())))
        with self._workers_lock:
            if self._live_workers:
                self._orphaned = True
                log.warning(
                    "%d worker(s) still busy %g s after stop; leaving them to finish",
                    self._live_workers,
                    self.limits.drain_s,
                )
                return
        self._finish_close()

    def _finish_close(self) -> None:
        self._streams.clear()
        self._close_sockets()

    def _close_sockets(self) -> None:
        self._router.close(linger=0)
        self._results.close(linger=0)
        if self._curve is not None:
            self._curve.close()
        self._ctx.term()  # waits for the workers' sockets, closed as they exit

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> ServerStats:
        with self._stats_lock:
            return ServerStats(
                self._received, self._ok, dict(self._errors), self._undeliverable, len(self._streams)
            )

    def _count(self, code: ErrorCode | None) -> None:
        with self._stats_lock:
            if code is None:
                self._ok += 1
            else:
                self._errors[code.value] = self._errors.get(code.value, 0) + 1

    # ------------------------------------------------------------------ the socket thread

    def _loop(self) -> None:
        try:
            self._serve()
        finally:
            self._loop_done.set()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._results, zmq.POLLIN)
        next_expiry = time.monotonic() + 1.0
        while not self._stop.is_set():
            events = dict(poller.poll(100))
            if self._results in events:
                self._forward_replies()
            if self._router in events:
                for _ in range(64):  # then let replies out
                    try:
                        frames, count = recv_frames(
                            self._router, _MAX_REQUEST_FRAMES, flags=zmq.NOBLOCK, copy=False
                        )
                    except zmq.Again:
                        break
                    try:
                        self._dispatch(frames, count)
                    except Exception:  # a bug here must cost one request, not the socket thread
                        log.exception("could not dispatch a request; it gets no reply")
                        self._count(ErrorCode.INTERNAL_ERROR)
            if time.monotonic() > next_expiry:
                self._streams.expire()
                next_expiry = time.monotonic() + 1.0
        self._drain(poller)

    def _drain(self, poller: zmq.Poller) -> None:
        """After stop: answer what was accepted (up to ``drain_s``), and refuse what arrives, so
        that clients get a reply, not a timeout, when the server is restarted or redeployed."""
        deadline = self._drain_deadline = time.monotonic() + self.limits.drain_s
        while self._outstanding > 0 and time.monotonic() < deadline:
            events = dict(poller.poll(20))
            if self._results in events:
                self._forward_replies()
            if self._router in events:
                self._refuse_arrivals()
        if self._outstanding:
            log.warning(
                "stopping with %d request(s) unanswered after %g s (those not started are refused as busy)",
                self._outstanding,
                self.limits.drain_s,
            )

    def _refuse_arrivals(self) -> None:
        """Refuse, as ``busy``, every request waiting in the ROUTER: the server is stopping. Only
        on the thread that owns the socket: the loop's, or close()'s once the loop has ended."""
        while True:
            try:
                frames, count = recv_frames(self._router, _MAX_REQUEST_FRAMES, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            with self._stats_lock:
                self._received += 1
            envelope, body, _ = _split_envelope(frames, count)
            self._refuse(envelope, ErrorCode.BUSY, CLOSING, body[0] if body else None)

    def _forward_replies(self) -> None:
        while True:
            try:
                frames = self._results.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._outstanding -= 1
            self._send(frames)

    def _send(self, frames: list[bytes]) -> None:
        try:
            self._router.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError:  # EHOSTUNREACH: the client went away; EAGAIN: it stopped reading
            with self._stats_lock:
                self._undeliverable += 1

    def _dispatch(self, frames: list[zmq.Frame], count: int) -> None:
        """``frames``: the first frames of a message of ``count`` (see ``recv_frames``)."""
        with self._stats_lock:
            self._received += 1
        envelope, body, malformed = _split_envelope(frames, count)
        if malformed is not None:
            self._refuse(envelope, ErrorCode.MALFORMED_MULTIPART, malformed)
            return
        n_body = count - len(envelope)
        if n_body != 2:
            self._refuse(
                envelope,
                ErrorCode.MALFORMED_MULTIPART,
                f"a request is 2 frames [header JSON, image bytes] after the envelope, got {n_body}",
                body[0] if body else None,
            )
            return
        total = sum(len(f) for f in body)
        if total > self.limits.max_bytes:
            self._refuse(
                envelope,
                ErrorCode.TOO_LARGE,
                f"the request is {total} bytes; the limit is {self.limits.max_bytes}",
                body[0],
            )
            return
        try:
            self._jobs.put_nowait(_Job(envelope, body))
            self._outstanding += 1
        except queue.Full:
            self._refuse(
                envelope,
                ErrorCode.BUSY,
                f"{self.limits.queue_size} requests are already waiting; retry later",
                body[0],
            )

    def _refuse(
        self, envelope: list[bytes], code: ErrorCode, message: str, header: zmq.Frame | None = None
    ) -> None:
        req_id = None
        if header is not None:  # echo the id when the header is readable (headers are <= 64 KiB)
            with contextlib.suppress(WireError):
                req_id = request_id(load_json_object(header.buffer))
        self._count(code)
        self._send(envelope + error_reply(req_id, code, message))

    # ------------------------------------------------------------------ workers

    def _work(self) -> None:
        push = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(self._inproc)
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                reply = self._handle(job)
                try:
                    push.send_multipart(job.envelope + reply, zmq.NOBLOCK)
                except zmq.ZMQError:  # the loop has stopped: the reply has nowhere to go
                    with self._stats_lock:
                        self._undeliverable += 1
        finally:
            push.close(linger=0)
            with self._workers_lock:
                self._live_workers -= 1
                last = self._orphaned and self._live_workers == 0
            if last:
                self._finish_close()

    def _handle(self, job: _Job) -> list[bytes]:
        started = time.perf_counter()
        timings: dict[str, float] = {"queue": (started - job.received) * 1000}
        req_id: int | str | None = None
        try:
            data = load_json_object(job.body[0].buffer)
            req_id = request_id(data)
            check_protocol(data)
            request = parse_request(data)
            if request.deadline_ms is not None and timings["queue"] > request.deadline_ms:
                # Its client has given up (and a retrying one has sent it again): running it
                # would only slow every request behind it.
                raise WireError(
                    ErrorCode.EXPIRED,
                    f"waited {timings['queue']:.0f} ms in the queue, past its deadline_ms "
                    f"{request.deadline_ms:g}; not run",
                )
            image = self._decode_image(request, job.body[1].buffer, timings)
            _check_reply_encodable(request, image.shape)
            reply = self._segment(request, image, timings, started, client=stream_owner(job.envelope))
            self._count(None)
            return reply
        except WireError as exc:
            self._count(exc.code)
            return error_reply(req_id, exc.code, exc.detail, timings_ms=_elapsed(timings, started))
        except Exception as exc:  # a bug or a backend failure: answer it, keep serving
            log.exception("request %r failed", req_id)
            self._count(ErrorCode.INTERNAL_ERROR)
            message = f"{type(exc).__name__}: {exc}"
            return error_reply(
                req_id, ErrorCode.INTERNAL_ERROR, message, timings_ms=_elapsed(timings, started)
            )

    def _decode_image(
        self, request: SegmentRequest, data: memoryview, timings: dict[str, float]
    ) -> np.ndarray:
        spec = request.image
        if spec.dtype != "uint8":
            raise WireError(ErrorCode.BAD_DTYPE, f"images must be uint8 BGR, got dtype {spec.dtype!r}")
        if spec.encoding == "raw" and spec.shape is not None and (len(spec.shape) != 3 or spec.shape[2] != 3):
            raise WireError(
                ErrorCode.BAD_SHAPE, f"a raw image must have shape [H, W, 3] (BGR), got {list(spec.shape)}"
            )
        t0 = time.perf_counter()
        image = decode_array(spec, data, max_pixels=self.limits.max_pixels, copy=False)
        if image.ndim != 3 or image.shape[2] != 3:
            raise WireError(
                ErrorCode.BAD_SHAPE, f"the image must be 3-channel BGR, got shape {list(image.shape)}"
            )
        timings["decode"] = (time.perf_counter() - t0) * 1000
        return image

    def _segment(
        self,
        request: SegmentRequest,
        image: np.ndarray,
        timings: dict[str, float],
        started: float,
        *,
        client: tuple[bytes, ...],
    ) -> list[bytes]:
        engine = self.engine
        h, w = image.shape[:2]
        size = engine.input_size
        t0 = time.perf_counter()
        if (w, h) != size:
            flag = cv2_interpolation(engine.meta.preprocessing.interpolation)
            x = cv2.resize(image, size, interpolation=flag)
        else:
            x = image if image.flags.writeable else image.copy()
        timings["resize"] = (time.perf_counter() - t0) * 1000
        if request.stream is None:
            result = Every().step(engine, x)
        else:
            state = self._streams.get(client, request.stream, start=request.start)
            with state.lock:
                if request.keyframe:
                    state.scheduler.reset()  # the schedule restarts here, with a keyframe
                result = state.scheduler.step(engine, x)
        timings.update(result.timings)
        is_key, age = result.is_keyframe, result.deep_age
        labels = np.ascontiguousarray(result.labels)
        t0 = time.perf_counter()
        if request.size == "input":
            labels = labels_at(labels, (h, w))
        specs, payloads = [], []
        spec, payload = encode_array("labels", labels, request.labels)
        specs.append(spec)
        payloads.append(payload)
        classes = engine.meta.classes
        if request.overlay:
            result = SegResult(labels, request.frame_index or 0, is_key, age, classes, dict(timings))
            s = self.style
            drawn = annotate(image, result, s.mode, s.alpha, s.legend, s.hud)
            spec, payload = encode_array("overlay", drawn, "jpeg", quality=request.overlay_quality)
            specs.append(spec)
            payloads.append(payload)
        timings["encode"] = (time.perf_counter() - t0) * 1000
        timings["total"] = (time.perf_counter() - started) * 1000 + timings["queue"]
        header: dict[str, Any] = {
            "proto": PROTOCOL,
            "type": "segment_reply",
            "id": request.id,
            "status": "ok",
            "stream": request.stream,
            "frame_index": request.frame_index,
            "capture_ts": request.capture_ts,
            "is_keyframe": is_key,
            "deep_age": age,
            "timings_ms": {k: round(v, 3) for k, v in timings.items()},
            "image_shape": [int(v) for v in image.shape],
            "input_size": list(size),
            "model": engine.meta.model,
            "parts": [p.to_dict() for p in specs],
            "classes": classes.to_dict(),
        }
        return [dumps(header), *payloads]
