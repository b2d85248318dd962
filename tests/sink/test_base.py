from __future__ import annotations

import threading

import pytest

from rtseg.sink.base import Sink


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
