"""close() from another thread or a signal handler must not leave a writer blocked or lose what
was written, a sink dropped or left open at exit is closed as close() closes it, and bad arguments
are ConfigErrors."""

from __future__ import annotations

import gc
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg.errors import ConfigError, SinkError
from rtseg.sink import open_sink
from rtseg.sink.base import Sink
from rtseg.sink.file import FileSink
from rtseg.sink.packet import Packet


class Stuck(Sink):
    """A sink whose emit waits on ``gate`` (a hung network peer or disk)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        super().__init__("stuck://", queue_size=1, policy="block")

    def emit(self, packet) -> None:
        self.gate.wait(10)


def test_close_from_another_thread_wakes_a_blocked_writer(packet_factory) -> None:
    sink = Stuck()
    sink.write(packet_factory(0))  # taken by the sink thread, which hangs in emit
    sink.write(packet_factory(1))  # fills the queue
    outcome: list[BaseException | None] = []

    def writer() -> None:
        try:
            sink.write(packet_factory(2))  # blocks: the queue is full
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join(0.2)
    sink.close(timeout=0.3)
    thread.join(1.0)
    alive = thread.is_alive()
    sink.gate.set()
    thread.join(5)
    assert not alive, "write() stayed blocked after close()"
    assert len(outcome) == 1 and isinstance(outcome[0], SinkError)
    assert "closed while" in str(outcome[0])
    assert sink.close() == sink.stats  # closing twice is safe


def test_frames_queued_before_close_are_written_and_close_twice_is_safe(packet_factory) -> None:
    class Recorder(Sink):
        def __init__(self) -> None:
            self.seen: list[int] = []
            super().__init__("rec://", queue_size=3, policy="block")

        def emit(self, packet) -> None:
            self.seen.append(packet.frame.index)

    sink = Recorder()
    for i in range(20):
        sink.write(packet_factory(i))
    assert sink.close().written == 20 and sink.seen == list(range(20))
    assert sink.close().written == 20
    with pytest.raises(SinkError, match="write after close"):
        sink.write(packet_factory(20))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"queue_size": 0}, "queue_size must be a positive whole number, got 0"),
        ({"queue_size": 2.5}, "queue_size must be a positive whole number, got 2.5"),
        ({"policy": "sometimes"}, "policy must be 'drop' or 'block', got 'sometimes'"),
    ],
)
def test_bad_sink_arguments_are_config_errors(kwargs: dict, message: str) -> None:
    class Nothing(Sink):
        def emit(self, packet) -> None:
            pass

    with pytest.raises(ConfigError, match=message):
        Nothing("x://", **kwargs)


def test_a_numpy_integer_queue_size_is_a_whole_number() -> None:
    class Nothing(Sink):
        def emit(self, packet) -> None:
            pass

    sink = Nothing("x://", queue_size=np.int64(3))  # was refused as not a whole number
    assert sink._queue.maxsize == 3 and type(sink._queue.maxsize) is int
    sink.close()


def test_close_keeps_one_deadline_for_draining_and_joining(packet_factory) -> None:
    sink = Stuck()
    sink.write(packet_factory(0))  # the sink thread hangs in emit with it
    sink.write(packet_factory(1))  # the queue is full: the stop marker cannot be queued
    start = time.monotonic()
    sink.close(timeout=1.0)
    took = time.monotonic() - start
    sink.gate.set()
    # Two separate waits of `timeout` each (queueing the stop marker, then the join) took 2 s.
    assert 0.9 <= took < 1.6, f"close(timeout=1.0) took {took:.2f} s"


class Slow(Sink):
    """A sink that takes 20 ms a frame: a writer with a small queue mostly waits for room."""

    def __init__(self, policy: str) -> None:
        self.seen: list[int] = []
        super().__init__("slow://", queue_size=1, policy=policy)

    def emit(self, packet) -> None:
        time.sleep(0.02)
        self.seen.append(packet.frame.index)


def _write_until_closed(sink: Sink, make_packet) -> tuple[int, SinkError | None]:
    """The user's loop: write frames until the sink refuses one; how many it took, and why not more."""
    for index in range(1000):
        try:
            sink.write(make_packet(index))
        except SinkError as exc:
            return index, exc
    return 1000, None


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_close_from_a_signal_handler_during_a_write_closes_as_the_write_returns(
    packet_factory, monkeypatch, outcome_in_thread, policy: str
) -> None:
    """A handler (SIGTERM's) that closes the sink while this thread is inside sink.write(): the
    write holds the lock close() takes, and close() waited for it, forever. The close marks the
    sink closed and returns the counts so far; the write closes it as it returns, nothing lost."""
    sink = Slow(policy)
    handled: list[object] = []
    put = sink._queue.put

    def interrupted(item, block: bool = True, timeout: float | None = None) -> None:
        # frame 5's write, under the write lock: as if a signal arrived here and its handler closed
        if isinstance(item, Packet) and item.frame.index == 5 and not handled:
            handled.append(sink.close())
        put(item, block, timeout)

    monkeypatch.setattr(sink._queue, "put", interrupted)
    deadlock = "close() and the write it interrupted deadlocked"
    outcome = outcome_in_thread(lambda: _write_until_closed(sink, packet_factory), 10, deadlock)
    ((taken, error),) = outcome
    # frame 5 was queued (the next write is refused), or its write still waited for room and says so
    if taken == 6:
        assert "write after close" in str(error), error
    else:
        assert policy == "block" and taken == 5, (taken, error)
        assert "closed while a frame waited" in str(error), error
    assert not sink._thread.is_alive(), "the interrupted write returned with the sink still open"
    final = sink.stats
    assert final.written + final.dropped == taken and final.written == len(sink.seen)
    assert sink.seen == sorted(sink.seen) and (policy == "drop" or sink.seen == list(range(taken)))
    assert handled[0].written <= final.written  # the counts when the handler ran, none made up
    assert sink.close() == final


def test_a_video_closed_by_a_signal_handler_during_a_write_is_whole(tmp_path: Path, packet_factory) -> None:
    """A real signal on the main thread, whose loop writes a video: the handler's close() waited
    for the write it interrupted, forever, and the video was left without its index (unreadable).
    Now every frame a write took is in the video, finalised as the interrupted write returns."""

    class SlowVideo(FileSink):
        def emit(self, packet) -> None:
            time.sleep(0.02)  # with a one-frame queue the loop mostly waits in write, under its lock
            super().emit(packet)

    class Deadlock(Exception):
        pass

    path = tmp_path / "out.mp4"
    sink = SlowVideo("out.mp4", path, queue_size=1)  # used alone: "block", every frame written
    handled: dict[str, object] = {}

    def handler(signum: int, frame: object) -> None:
        if handled:  # the second signal, 5 s on: the first one's close() has not returned
            if "stats" not in handled:
                raise Deadlock("close() from the signal handler waited for the write it interrupted")
            return
        handled["entered"] = True
        handled["stats"] = sink.close()

    main = threading.get_ident()
    timers = [threading.Timer(delay, signal.pthread_kill, (main, signal.SIGUSR1)) for delay in (0.3, 5.0)]
    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        for timer in timers:
            timer.start()
        taken, error = _write_until_closed(sink, packet_factory)
    finally:
        for timer in timers:
            timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert isinstance(error, SinkError) and "stats" in handled, (error, handled)
    assert not sink._thread.is_alive(), "the video was not closed when the interrupted write returned"
    final = sink.stats
    assert final.written == taken > 0 and final.errors == 0 and final.close_error is None, final
    assert handled["stats"].written <= final.written
    cap = cv2.VideoCapture(str(path))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    assert frames == taken, f"the video holds {frames} frames of the {taken} written"
    assert sink.close() == final


def _frames_in(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    return frames


class _InCycle(Sink):
    """A sink in a reference cycle: only the garbage collector frees it, after its weak references
    are cleared. What it writes and whether it was released are kept outside it."""

    def __init__(self, seen: list[int], released: list[bool]) -> None:
        self.me = self
        self.seen, self.released = seen, released
        super().__init__("cycle://", queue_size=8, policy="block")

    def emit(self, packet) -> None:
        time.sleep(0.01)  # still writing when it is dropped
        self.seen.append(packet.frame.index)

    def release(self) -> None:
        self.released.append(True)


def test_dropping_a_sink_does_not_wait_for_its_writes(packet_factory) -> None:
    """The drop waited up to 2 s for the sink's thread, on whatever thread dropped it (a garbage
    collection in the frame loop included); the close goes on on the sink's own thread."""
    sink = Stuck()
    gate, thread = sink.gate, sink._thread
    sink.write(packet_factory(0))  # taken by the sink thread, which hangs in emit
    start = time.perf_counter()
    del sink
    took = time.perf_counter() - start
    gate.set()
    thread.join(5)
    assert took < 1.0 and not thread.is_alive()


@pytest.mark.parametrize("kind", ["null", "mp4", "cycle"])
def test_dropped_sinks_are_closed_and_their_threads_end(kind: str, tmp_path: Path, packet_factory) -> None:
    """A sink dropped without close() kept its thread (the loop was a bound method of the sink)
    and its output: a thread and an unfinished video per sink, for ever."""
    before = threading.active_count()
    threads: list[threading.Thread] = []
    seen: list[list[int]] = []
    released: list[list[bool]] = []
    for i in range(5):
        if kind == "cycle":
            seen.append([])
            released.append([])
            sink: Sink = _InCycle(seen[-1], released[-1])
        else:
            sink = open_sink("null://" if kind == "null" else str(tmp_path / f"out{i}.mp4"))
        for index in range(4):
            sink.write(packet_factory(index))
        threads.append(sink._thread)
        del sink
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        gc.collect()  # a sink in a cycle is freed by a collection once its thread lets go of it
        time.sleep(0.02)
    assert not [t.name for t in threads if t.is_alive()]
    assert threading.active_count() == before
    if kind == "mp4":
        assert [_frames_in(tmp_path / f"out{i}.mp4") for i in range(5)] == [4] * 5
    if kind == "cycle":
        assert seen == [[0, 1, 2, 3]] * 5 and released == [[True]] * 5


_LEFT_OPEN = """
import sys, time
import numpy as np
import rtseg
from rtseg.data.labels import CAMVID
from rtseg.result import SegResult
from rtseg.sink import Packet
from rtseg.source.frame import Frame

sink = rtseg.open_sink(sys.argv[1])
for i in range(30):
    image = np.full((48, 64, 3), i * 8, np.uint8)
    result = SegResult(np.zeros((24, 32), np.uint8), i, True, 0, CAMVID, {})
    sink.write(Packet(Frame(image, i, time.time(), time.perf_counter(), "test://"), result))
"""


def test_a_video_sink_left_open_at_exit_is_finalised(tmp_path: Path, exits_cleanly) -> None:
    """A script that wrote to open_sink("x.mp4") and ended without close() left a 44-byte mp4
    without its index (the sink's daemon thread was killed), and at times aborted ("FATAL:
    exception not rethrown")."""
    out = tmp_path / "left.mp4"
    exits_cleanly(_LEFT_OPEN, str(out))
    assert _frames_in(out) == 30
