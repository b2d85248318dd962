"""Sinks: outputs that never block inference unless asked to.

Every sink runs its ``emit`` on its own thread behind a bounded queue. With ``policy="drop"``
(live sources) a full queue drops the oldest packet and counts it, so a slow disk or network
costs frames, never latency. With ``policy="block"`` (files) the pipeline waits: every frame of
a recording is written. A sink made without a policy takes the one its ``Pipeline`` chooses for
the source; used alone, it takes its class's ``standalone_policy``.

A sink dropped without ``close()``, or still open at interpreter exit, is closed as ``close()``
closes it: what it was handed is written and the output released (a video unreadable until its
index is written on close is finalised).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import numbers
import queue
import threading
import time
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

from ..errors import ConfigError, InputTypeError, SinkError
from .packet import Packet

log = logging.getLogger(__name__)

Policy = Literal["drop", "block"]
_STOP = object()
_WRITE_POLL_S = 0.05  # a blocked write re-checks for close() this often
# An idle sink thread looks this often for a drop it could not be woken for (its sink's finalizer
# ran on that thread itself, perhaps inside a queue operation, where queueing could deadlock).
_IDLE_POLL_S = 0.5
# How long a sink's thread waits for a dropped sink's __del__ to hand it back, once a garbage
# collection has cleared the thread's weak reference to it (another thread may run in between).
_HANDBACK_WAIT_S = 2.0
# At interpreter exit, the sinks still open and those still closing get this long, all together.
_EXIT_WAIT_S = 30.0
_exit_deadline: float | None = None
# The threads of sinks closed or dropped that were still writing or releasing when their close
# stopped waiting; joined at exit, before daemon threads are killed (a video without its index).
_finishing: set[threading.Thread] = set()


@dataclass(frozen=True)
class SinkStats:
    written: int
    dropped: int
    errors: int
    last_error: str | None
    emit_ms: float = 0.0  # total time spent in emit (drawing, encoding, writing) on the sink's thread
    # Why closing the output failed (also counted in errors): a video whose index was not written,
    # or whose read-back check failed, is not the ``written`` frames it was given.
    close_error: str | None = None


def _check_policy(policy: object) -> None:
    if policy not in ("drop", "block"):
        raise ConfigError(f"policy must be 'drop' or 'block', got {policy!r}")


class Sink(ABC):
    """Base class: subclasses implement ``emit`` (and ``release`` for cleanup).

    ``policy=None`` (the default): a ``Pipeline`` sets it from its source, as for the sinks it
    opens from URIs (drop behind a live source, block behind a file: a recording is complete);
    used outside a pipeline the sink has ``standalone_policy`` ("drop" here: a write never waits).
    A policy given is kept.
    """

    standalone_policy: ClassVar[Policy] = "drop"

    def __init__(self, uri: str, *, queue_size: int = 4, policy: Policy | None = None) -> None:
        if not isinstance(queue_size, numbers.Integral) or isinstance(queue_size, bool) or queue_size <= 0:
            raise ConfigError(f"queue_size must be a positive whole number, got {queue_size!r}")
        queue_size = int(queue_size)  # a NumPy integer from a config array is one too
        if policy is not None:
            _check_policy(policy)
        self.uri = uri
        self._policy: Policy | None = policy
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._written = 0
        self._dropped = 0
        self._errors = 0
        self._last_error: str | None = None
        self._close_error: str | None = None
        self._emit_ms = 0.0
        # The counts. Reentrant: a pipeline's close() from a signal handler that interrupted a
        # write counting a drop takes the statistics (a plain lock waited for itself, forever).
        self._lock = threading.RLock()
        # Held while a write checks ``_closed`` and enqueues, and while close() sets it: nothing is
        # queued behind the stop marker, and a dropping write can never discard that marker.
        # Reentrant, for close() from a signal handler that interrupted a write on its thread (a
        # plain lock waited for itself there, forever).
        self._write_lock = threading.RLock()
        self._closed = False
        # The threads inside write(). A close() on one of them comes from a signal handler that
        # interrupted that write, which may hold this sink's locks or its queue's: the close only
        # marks the sink closed and leaves the rest (the stop marker, the join) to the write as it
        # returns. _deferred_close is that thread's id and the close's timeout.
        self._writers: set[int] = set()
        self._deferred_close: tuple[int, float | None] | None = None
        self._closing = threading.Event()  # close() has begun: blocked writers give up
        # The thread ended on a BaseException that is no Exception (sys.exit() in emit): nothing
        # takes packets off the queue any more, so a write counts its frame as an error instead.
        self._dead = False
        self._stop_requested = threading.Event()
        # The thread holds its sink only while it emits a packet or releases the output, so a sink
        # dropped without close() is collected, and its __del__ closes it; a bound method as the
        # thread's target kept it alive, its thread and output open, for ever.
        self._channel = _Channel(self._queue)
        self._thread = threading.Thread(
            target=_serve, args=(weakref.ref(self), self._channel), name=f"sink:{uri}", daemon=True
        )
        self._thread.start()
        # Still open at exit (a script that ends without close()): closed from atexit, while the
        # thread still runs. Made after the thread, which a failing __init__ never started.
        weakref.finalize(self, _close_left_open, weakref.ref(self))

    @abstractmethod
    def emit(self, packet: Packet) -> None:
        """Write one packet; runs on the sink's thread."""

    @property
    def draws(self) -> bool:
        """Whether this sink draws the overlay (``Packet.overlay()``), so that the overlay style
        (mode, alpha, legend, HUD) shows in what it outputs; a sink that writes only label maps
        or nothing says False."""
        return True

    @property
    def policy(self) -> Policy:
        """The queue's policy, "drop" or "block": the one given, else the pipeline's, else
        ``standalone_policy``."""
        return self.standalone_policy if self._policy is None else self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        _check_policy(policy)
        self._policy = policy

    def follow_pipeline(self, *, policy: Policy, fps: float | None, timed: bool) -> None:
        """Take the settings a ``Pipeline`` chooses for its source (``policy``; ``fps``, the rate of
        the frames it delivers, None if not known; ``timed``, whether it drops frames to stay
        live) where the sink's maker set none; called once, before the first write. The base
        class has a policy only; a subclass with a frame rate or a timeline extends this."""
        if self._policy is None:
            self._policy = policy

    @property
    def destination(self) -> str:
        """Where the output goes, as a user should be told (a publisher adds the port it bound)."""
        return self.uri

    def release(self) -> None:  # noqa: B027 (optional hook)
        """Flush and close the underlying output; runs on the sink's thread after the last emit."""

    def write(self, packet: Packet) -> None:
        """Queue a packet; with "block" wait for room (in short waits, so that a close() from
        another thread ends the wait with a SinkError instead of leaving this thread hung). Once
        the sink's thread has ended (a sys.exit() in emit), the frame is counted as an error, not
        written, as a frame whose emit failed is: the queue behind it is never emptied again.
        A close() from a signal handler that interrupted this write only marked the sink closed:
        the write finishes (its packet queued, or a SinkError if it still waited for room) and
        then closes the sink, what was queued written, before it returns or raises. Anything but
        a ``Packet`` is refused here: queued, it failed on the sink's thread, counted as an error
        with nothing written and the caller none the wiser."""
        if not isinstance(packet, Packet):
            raise InputTypeError(
                f"{self.uri}: write() takes a Packet, got {type(packet).__name__}; pass "
                "sink.write(rtseg.sink.Packet(frame, result)), the Frame and its SegResult"
            )
        me = threading.get_ident()
        try:
            self._writers.add(me)  # inside the try: the finally runs whenever a close deferred to it
            self._write(packet)
        finally:
            self._writers.discard(me)
            deferred = self._deferred_close
            if deferred is not None and deferred[0] == me:
                self._deferred_close = None
                self._finish_close(deferred[1])

    def _write(self, packet: Packet) -> None:
        waited = False
        while True:
            with self._write_lock:
                if self._closed:
                    if waited:
                        raise SinkError(
                            f"{self.uri}: closed while a frame waited for room in the queue (not written)"
                        )
                    raise SinkError(f"{self.uri}: write after close")
                if self._dead:
                    self._count_lost(1)
                    return
                if self.policy != "block":
                    self._put_dropping_oldest(packet)
                    return
                try:
                    self._queue.put(packet, timeout=_WRITE_POLL_S)
                    return
                except queue.Full:
                    waited = True
            if self._closing.is_set():  # checked outside the lock, so close() gets it next
                raise SinkError(
                    f"{self.uri}: closed while a frame waited for room in the queue (not written)"
                )

    def _put_dropping_oldest(self, packet: Packet) -> None:
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

    def _emit_counted(self, packet: Packet) -> bool:
        """Emit one packet on the sink's thread, counting it written or an error; False when the
        thread must end (a BaseException that is no Exception)."""
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
        except BaseException as exc:
            # sys.exit() (or another BaseException) in a user's emit ends this thread. Uncaught,
            # it ended it without a word: a pipeline behind a file then waited forever for room
            # in the queue, and behind a camera the sink went silent with no error counted.
            with self._lock:
                self._errors += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._dead = True
            log.error(
                "sink %s: %s ended its thread; the frames it is given from now on are counted as "
                "errors, not written",
                self.uri,
                self._last_error,
            )
            return False
        return True

    def _release_output(self) -> None:
        """``release()`` on the sink's thread, after the last emit; a failure is the close's error."""
        try:
            self.release()
        except BaseException as exc:  # sys.exit() in release too: the output's close failed
            with self._lock:
                self._errors += 1
                self._last_error = self._close_error = f"{type(exc).__name__}: {exc}"
            log.error("sink %s: closing failed: %s", self.uri, self._last_error)

    def _count_lost(self, frames: int) -> None:
        """Frames given to a sink whose thread has ended: errors, not written."""
        with self._lock:
            self._errors += frames

    def _interrupt(self) -> None:
        """End a write blocked for room (it raises SinkError, the frame not written), as close()
        does first; safe from a signal handler. A pipeline's close() from a handler that
        interrupted its step does only this, and the pipeline's loop closes the sink as it unwinds."""
        self._closing.set()

    def _on_own_thread(self) -> bool:
        """Whether the caller runs on this sink's thread (its emit or release)."""
        return threading.current_thread() is self._thread

    def close(self, timeout: float | None = 30.0) -> SinkStats:
        """Deliver what is queued, release the output, and return the final counts. From a signal
        handler that interrupted a write on this thread it cannot wait (the write may hold the
        queue's lock): it marks the sink closed and returns the counts so far; the write closes
        the sink as it returns, and ``stats`` (or close() again) then gives the final counts."""
        if self._on_own_thread():
            # From the sink's own thread (its emit, or a finalizer the garbage collector ran there):
            # it cannot wait for itself, so the loop ends once what is queued has been written.
            self._closing.set()
            with self._write_lock:
                self._closed = True
            return self.stats
        me = threading.get_ident()
        if me in self._writers:
            # A blocked write gives up; one that got its packet in keeps it, written at the close.
            self._closing.set()
            with self._write_lock:  # reentrant: held by the interrupted write, perhaps
                if not self._closed:
                    self._closed = True
                    self._deferred_close = (me, timeout)
            return self.stats
        if not self._closed:
            self._closing.set()
            with self._write_lock:
                self._closed = True
            self._finish_close(timeout)
        return self.stats

    def _finish_close(self, timeout: float | None) -> None:
        """The close's work once the sink is marked closed: queue the stop marker behind what was
        written, wait for the sink's thread to write it and release the output."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                if self._dead or not self._thread.is_alive():  # nothing will make room
                    break
                if deadline is not None and time.monotonic() > deadline:
                    log.warning("sink %s: queue did not drain in %.3g s", self.uri, timeout)
                    break
        # One deadline for both waits: close(timeout) returns within about ``timeout`` seconds.
        self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("sink %s: still writing after %.3g s; leaving it to finish", self.uri, timeout)
            _finishing.add(self._thread)  # waited for at exit
        elif self._dead:  # its thread ended: what is left in the queue was never written
            self._count_lost(self._drain())

    def __del__(self) -> None:
        """Dropped without close(): closed as close() closes it, what was queued written and the
        output released, by the sink's thread, which gets the sink back through ``dropped``. The
        thread that dropped it does not wait: a garbage collection can run this on any thread, the
        pipeline's frame loop included, which must not stall on a video's index being written (at
        exit, the close is waited for; to reuse the file or endpoint at once, call close())."""
        try:
            channel, thread = self._channel, self._thread
        except AttributeError:  # __init__ failed before the thread started: nothing to close
            return
        if self._dead or not thread.is_alive():
            return  # closed, or its thread ended in emit: nothing is left to do
        # Kept alive until its thread is done with it, also when a close() that stopped waiting
        # (its timeout) left the thread to finish.
        channel.dropped = self
        _finishing.add(thread)
        if self._closed:
            return
        self._closed = True
        if threading.current_thread() is thread:
            # Dropped on its own thread (the last reference was the one the loop held, or a
            # collection ran there, perhaps inside a queue operation, where queueing could wait
            # for itself): the loop finds it once what is queued is written.
            return
        # No room (frames queued behind "block"): the loop ends once they are written (closed, empty).
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)

    def _drain(self) -> int:
        """Empty the queue; the number of packets it held."""
        lost = 0
        while True:
            try:
                lost += self._queue.get_nowait() is not _STOP
            except queue.Empty:
                return lost

    @property
    def stats(self) -> SinkStats:
        with self._lock:
            return SinkStats(
                self._written, self._dropped, self._errors, self._last_error, self._emit_ms, self._close_error
            )

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


class _Channel:
    """What a sink shares with its thread: the queue, and the sink its finalizer hands back to be
    closed (``dropped``: the thread's weak reference to it may already be cleared)."""

    __slots__ = ("dropped", "queue")

    def __init__(self, q: queue.Queue) -> None:
        self.queue = q
        self.dropped: Sink | None = None


def _serve(sink_ref: weakref.ReferenceType[Sink], channel: _Channel) -> None:
    """A sink's thread: emit each queued packet, then release the output. It holds the sink only
    while it emits or releases, so a sink dropped without close() is collected; its __del__ hands
    it back (``channel.dropped``) to have what is queued written and the output released here."""
    q = channel.queue
    sink: Sink | None = None
    try:
        while True:
            try:
                item = q.get(timeout=_IDLE_POLL_S)
            except queue.Empty:
                if channel.dropped is None and sink_ref() is not None:
                    continue  # open, and nothing to write
                item = _STOP  # dropped while idle: release the output
            sink = _sink_of(sink_ref, channel)
            if sink is None:
                return  # collected without its __del__ (a subclass's that does not call it)
            if item is _STOP or not sink._emit_counted(item):
                break
            if sink._closed and q.empty():
                break  # closed from this thread (see close), or dropped: what was queued is written
            # The sink's last reference may be this one: its __del__ then runs here, on this thread.
            sink = item = None
            if channel.dropped is not None and q.empty():
                sink = channel.dropped
                break
        sink._release_output()
    finally:
        channel.dropped = sink = None
        _finishing.discard(threading.current_thread())


def _sink_of(sink_ref: weakref.ReferenceType[Sink], channel: _Channel) -> Sink | None:
    """The sink the thread works for: alive, or handed back by its __del__. A garbage collection
    clears the weak reference before it runs __del__ (another thread may run in between): wait
    for the hand-back a while, and say None if it never comes."""
    sink = channel.dropped
    if sink is None:
        sink = sink_ref()
    deadline = time.monotonic() + _HANDBACK_WAIT_S
    while sink is None and time.monotonic() < deadline:
        time.sleep(0.005)
        sink = channel.dropped
    return sink


def _close_left_open(sink_ref: weakref.ReferenceType[Sink]) -> None:
    """A sink's finalizer: at exit, close it if still open (sharing one deadline, so that exit
    cannot hang on a sink that never ends). Run when the sink is collected, it finds none: its
    __del__ closed it."""
    sink = sink_ref()
    if sink is not None:
        Sink.close(sink, timeout=_exit_time_left())  # the base close: an override may take no timeout


def _exit_time_left() -> float:
    global _exit_deadline
    if _exit_deadline is None:
        _exit_deadline = time.monotonic() + _EXIT_WAIT_S
    return max(0.0, _exit_deadline - time.monotonic())


@atexit.register
def _join_finishing() -> None:
    """At exit, wait (bounded) for the sinks still closing: their threads are daemons, killed
    once the interpreter finalises, which left a video without its index."""
    for thread in list(_finishing):
        thread.join(_exit_time_left())
