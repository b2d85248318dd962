"""close() from another thread must not leave a writer blocked, and bad arguments are ConfigErrors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from rtseg.errors import ConfigError, SinkError
from rtseg.sink.base import Sink


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
