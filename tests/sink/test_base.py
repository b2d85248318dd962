from __future__ import annotations

import threading

import pytest

from rtseg.errors import InputTypeError, SinkError
from rtseg.sink.base import Sink, SinkStats


class Gate(Sink):
    """A sink whose writes wait for the test."""

    def __init__(self, policy: str) -> None:
        self.gate = threading.Event()
        self.seen: list[int] = []
        super().__init__("gate://", queue_size=2, policy=policy)

    def emit(self, packet) -> None:
        self.gate.wait(5)
        self.seen.append(packet.frame.index)


def test_drop_policy_never_blocks_and_counts(packet_factory) -> None:
    sink = Gate("drop")
    for i in range(10):
        sink.write(packet_factory(i))  # returns at once even though emit is stuck
    sink.gate.set()
    stats = sink.close()
    assert stats.dropped >= 6 and stats.written + stats.dropped == 10
    assert sink.seen[-1] == 9  # the newest survive


def test_block_policy_delivers_everything(packet_factory) -> None:
    sink = Gate("block")
    sink.gate.set()
    for i in range(10):
        sink.write(packet_factory(i))
    assert sink.close().written == 10 and sink.seen == list(range(10))


def test_stop_request_and_errors(packet_factory) -> None:
    class Failing(Sink):
        def emit(self, packet) -> None:
            self.request_stop()
            raise OSError("disk full")

    sink = Failing("fail://", policy="block")
    sink.write(packet_factory(0))
    stats = sink.close()
    assert sink.stop_requested and stats.errors == 1 and "disk full" in stats.last_error
    with pytest.raises(ValueError):
        Failing("x://", policy="sometimes")


def test_a_failed_close_is_told_apart_from_failed_frames(packet_factory) -> None:
    """A close that failed (a video whose index was not written) was only one more error: nothing
    told it from a skipped frame, and `rtseg run` said "wrote out.mp4 (N frames)" of a file that
    does not open."""

    class Unclosable(Sink):
        def emit(self, packet) -> None:
            if packet.frame.index == 1:
                raise SinkError("frame 1 skipped")

        def release(self) -> None:
            raise SinkError("the index was not written")

    sink = Unclosable("unclosable://", policy="block")
    for i in range(3):
        sink.write(packet_factory(i))
    stats = sink.close()
    assert stats.written == 2 and stats.errors == 2
    assert stats.close_error == stats.last_error == "SinkError: the index was not written"

    sink = Gate("block")
    sink.gate.set()
    sink.write(packet_factory(0))
    assert sink.close().close_error is None


def test_close_from_the_sinks_own_thread_delivers_what_is_queued(packet_factory) -> None:
    """close() on the sink's thread (its emit, or a Pipeline finalizer the garbage collector runs
    there) joined its own thread: RuntimeError, and the output was never released."""

    class SelfClosing(Sink):
        def __init__(self) -> None:
            self.seen: list[int] = []
            self.released = threading.Event()
            self.go = threading.Event()
            super().__init__("self://", queue_size=4, policy="block")

        def emit(self, packet) -> None:
            self.go.wait(5)
            self.seen.append(packet.frame.index)
            if packet.frame.index == 0:
                self.close()

        def release(self) -> None:
            self.released.set()

    sink = SelfClosing()
    for i in range(3):
        sink.write(packet_factory(i))
    sink.go.set()
    assert sink.released.wait(5) and sink.seen == [0, 1, 2]
    with pytest.raises(SinkError, match="write after close"):
        sink.write(packet_factory(3))
    assert sink.close().written == 3 and sink.stats.errors == 0


class Exiting(Sink):
    """A user's sink whose emit calls sys.exit() (or raises another BaseException)."""

    def emit(self, packet) -> None:
        raise SystemExit("sink sys.exit")


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_a_sink_whose_thread_ends_counts_its_frames_as_errors(packet_factory, policy: str) -> None:
    """sys.exit() in emit ended the sink's thread without a word: behind a file the next writes
    waited forever for room in the queue, and behind a camera they were silently dropped (no
    error counted). The frames are errors now, as for an emit that raised."""
    sink = Exiting("exit://", queue_size=1, policy=policy)
    sink.write(packet_factory(0))
    sink._thread.join(10)
    assert not sink._thread.is_alive()
    writer = threading.Thread(
        target=lambda: [sink.write(packet_factory(i)) for i in range(1, 4)], daemon=True
    )
    writer.start()
    writer.join(10)
    assert not writer.is_alive(), "write() waited for room in a queue nothing empties any more"
    stats = sink.close()
    assert (stats.written, stats.dropped, stats.errors) == (0, 0, 4)
    assert stats.last_error == "SystemExit: sink sys.exit" and stats.close_error is None


def test_frames_queued_when_a_sink_thread_ends_are_counted_as_errors(packet_factory) -> None:
    """The ones the thread never took are not written either."""
    go = threading.Event()

    class ExitingLater(Sink):
        def emit(self, packet) -> None:
            go.wait(10)
            raise SystemExit("sink sys.exit")

    sink = ExitingLater("exit://", queue_size=4, policy="block")
    for i in range(4):  # one emitting, three queued
        sink.write(packet_factory(i))
    go.set()
    stats = sink.close(timeout=10)
    assert (stats.written, stats.errors) == (0, 4)


def test_a_base_exception_in_release_is_a_failed_close(packet_factory) -> None:
    class ExitingRelease(Sink):
        def emit(self, packet) -> None:
            pass

        def release(self) -> None:
            raise SystemExit("release sys.exit")

    sink = ExitingRelease("exit://", policy="block")
    sink.write(packet_factory(0))
    stats = sink.close()
    assert stats.written == 1 and stats.errors == 1
    assert stats.close_error == stats.last_error == "SystemExit: release sys.exit"


@pytest.mark.parametrize("given", ["tuple", "Frame", "SegResult", "ndarray"])
def test_write_refuses_what_is_not_a_packet(packet_factory, given: str) -> None:
    """sink.write((frame, result)) was queued and failed on the sink's thread: nothing written,
    an error counted, the caller told nothing."""
    packet = packet_factory(0)
    wrong = {
        "tuple": (packet.frame, packet.result),
        "Frame": packet.frame,
        "SegResult": packet.result,
        "ndarray": packet.frame.image,
    }[given]
    sink = Gate("block")
    sink.gate.set()
    expected = (
        rf"gate://: write\(\) takes a Packet, got {wrong.__class__.__name__}; pass .*Packet\(frame, result\)"
    )
    with pytest.raises(InputTypeError, match=expected):
        sink.write(wrong)
    sink.write(packet)
    assert sink.close() == SinkStats(1, 0, 0, None, sink.stats.emit_ms)
