"""Long-running receivers under failure: a dying drain thread, oversized multipart messages, lost
skip counts, and close() racing a thread that still uses the socket."""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import cv2
import numpy as np
import pytest
import zmq
from test_subscriber import RawPublisher, frame_message, wait_received

from rtseg.data.labels import CAMVID
from rtseg.engine import Engine
from rtseg.errors import ConfigError, ProtocolError, SourceError, StreamTimeout
from rtseg.schedule import Clockwork
from rtseg.stream import Client, Server, ServerLimits, Subscriber
from rtseg.stream import subscriber as subscriber_module
from rtseg.stream.protocol import dumps, loads

# Two-byte frames: CPython caches empty and one-byte bytes objects, so they would cost nothing.
MANY_FRAMES = 200_000


def _peak_mb_while(action: Callable[[], None]) -> float:
    """Peak Python memory (all threads) while ``action`` runs, above what was in use before it."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        action()
        return (tracemalloc.get_traced_memory()[1] - base) / 1e6
    finally:
        tracemalloc.stop()


@pytest.fixture
def raw_pub(tcp_endpoint: str) -> Iterator[RawPublisher]:
    raw = RawPublisher(tcp_endpoint)
    try:
        yield raw
    finally:
        raw.close()


# ------------------------------------------------------------------ 1. the drain thread dies


def test_recv_reports_a_dead_drain_thread_instead_of_timing_out(
    raw_pub: RawPublisher, tcp_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception but a ZMQError ended the latest-mode thread silently: recv then waited for the
    whole timeout (or forever) with no hint of why."""
    with Subscriber(tcp_endpoint, latest=True) as sub:
        raw_pub.connect(sub)

        def broken(self: Subscriber, *args: object) -> None:
            raise MemoryError("injected: no memory for the header")

        monkeypatch.setattr(Subscriber, "_accept_locked", broken)
        raw_pub.sock.send_multipart(frame_message(1))
        t0 = time.monotonic()
        with pytest.raises(SourceError, match=r"receiving thread .*failed.*MemoryError: injected") as info:
            sub.recv(timeout=10)
        assert time.monotonic() - t0 < 3.0
        assert isinstance(info.value.__cause__, MemoryError)
        with pytest.raises(SourceError, match="MemoryError"):  # and again: it does not come back
            sub.recv(timeout=0.1)
        assert "MemoryError" in str(sub.stats.last_error)


# ------------------------------------------------------------------ 2. too many frames


@pytest.mark.parametrize("latest", [False, True])
def test_a_message_with_too_many_frames_is_refused_before_per_part_work(
    latest: bool, raw_pub: RawPublisher, tcp_endpoint: str
) -> None:
    """A frame message is [topic, header] and at most 16 parts; one with 200,000 parts was read
    whole into Python (tens of MB, per message) before the part count was even compared."""
    with Subscriber(tcp_endpoint, latest=latest, topics=["cam0"]) as sub:
        raw_pub.connect(sub, "cam0")
        good = frame_message(1)
        bad = [good[0], good[1], *([b"xx"] * MANY_FRAMES)]
        got: list[int] = []

        def receive() -> None:
            raw_pub.sock.send_multipart(bad)
            raw_pub.sock.send_multipart(frame_message(2))
            got.append(sub.recv(timeout=10).header.seq)

        peak = _peak_mb_while(receive)
        stats = sub.stats
    assert got == [2]
    assert stats.malformed == 1 and "200002 frames" in str(stats.last_error), stats.last_error
    assert peak < 3.0, f"{peak:.1f} MB"


def test_the_server_refuses_a_request_with_too_many_frames_before_per_part_work(
    small_engine: Engine, tcp_endpoint: str
) -> None:
    with Server(small_engine, bind=tcp_endpoint).start() as server:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.endpoint)
        replies: list[list[bytes]] = []
        try:
            header = dumps({"proto": "rtseg/1", "type": "segment", "id": 7})
            bad = [b"", header, b"xx", *([b"xx"] * MANY_FRAMES)]

            def request() -> None:
                sock.send_multipart(bad)
                assert sock.poll(10_000), "no reply"
                replies.append(sock.recv_multipart())

            peak = _peak_mb_while(request)
        finally:
            sock.close(linger=0)
            ctx.term()
        stats = server.stats
    reply = loads(replies[0][1])
    assert reply["id"] == 7 and reply["error"]["code"] == "malformed_multipart", reply
    assert f"got {MANY_FRAMES + 2}" in reply["error"]["message"]
    assert stats.errors == {"malformed_multipart": 1}
    assert peak < 3.0, f"{peak:.1f} MB"


# ------------------------------------------------------------------ 3. skip counts


def _corrupt_png() -> bytes:
    """A PNG that frames (signature, size, IEND) but does not decode: its compressed data is broken."""
    data = bytearray(cv2.imencode(".png", np.arange(24, dtype=np.uint8).reshape(4, 6))[1].tobytes())
    at = data.find(b"IDAT") + 6
    data[at : at + 2] = bytes(b ^ 0xFF for b in data[at : at + 2])
    return bytes(data)


@pytest.mark.parametrize(
    ("encoding", "part"),
    [("raw", b"\x00" * 5), ("png", b"not a png"), ("png", b"\xff\xd8\xff\xe0 a jpeg")],
    ids=["raw-truncated", "png-garbage", "jpeg-as-png"],
)
def test_a_message_whose_parts_do_not_frame_leaves_the_stream_as_it_was(
    raw_pub: RawPublisher, tcp_endpoint: str, encoding: str, part: bytes
) -> None:
    """The newest-only subscriber takes seq, session and classes from a header before decoding the
    parts: a header whose parts do not even frame must not restart the stream or drop its classes."""
    with Subscriber(tcp_endpoint, latest=True, topics=["cam0"]) as sub:
        raw_pub.connect(sub, "cam0")
        raw_pub.sock.send_multipart(frame_message(1, classes=CAMVID, session="abc"))
        assert sub.recv(timeout=5).classes == CAMVID
        before = sub.stats
        bad = frame_message(5)  # another seq, and no session: a restart, were it believed
        header = json.loads(bad[1])
        header["parts"] = [{"name": "labels", "encoding": encoding, "dtype": "uint8", "shape": [4, 6]}]
        raw_pub.sock.send_multipart([bad[0], json.dumps(header).encode(), part])
        raw_pub.sock.send_multipart(frame_message(2, session="abc"))
        message = sub.recv(timeout=5)
        stats = sub.stats
    assert message.header.seq == 2 and message.classes == CAMVID
    assert stats.restarts == before.restarts and stats.gaps == before.gaps
    assert stats.malformed - before.malformed == 1


@pytest.mark.parametrize(
    "descriptor",
    [
        {"name": "depth", "encoding": "zstd", "dtype": "uint16", "shape": [4, 6]},
        {"name": "depth", "encoding": "raw", "dtype": "int64", "shape": [4, 6]},
    ],
    ids=["unknown-encoding", "unknown-dtype"],
)
def test_a_later_publishers_new_part_is_skipped_not_the_message(
    raw_pub: RawPublisher, tcp_endpoint: str, descriptor: dict
) -> None:
    """rtseg/1: "ignore unknown fields and unknown part names". A part of a new name in an encoding
    or dtype this version does not know made the whole message malformed, its labels with it."""
    with Subscriber(tcp_endpoint, latest=True, topics=["cam0"]) as sub:
        raw_pub.connect(sub, "cam0")
        good = frame_message(1)
        header = json.loads(good[1])
        header["parts"].append(descriptor)
        raw_pub.sock.send_multipart([good[0], json.dumps(header).encode(), good[2], b"\x01" * 48])
        message = sub.recv(timeout=5)
        stats = sub.stats
    assert set(message.parts) == {"labels"} and stats.malformed == 0
    np.testing.assert_array_equal(message.parts["labels"], np.full((4, 6), 1, np.uint8))


def test_a_known_part_in_an_unknown_encoding_is_still_malformed(
    raw_pub: RawPublisher, tcp_endpoint: str
) -> None:
    with Subscriber(tcp_endpoint, latest=True, topics=["cam0"]) as sub:
        raw_pub.connect(sub, "cam0")
        before = sub.stats
        bad = frame_message(1)
        header = json.loads(bad[1])
        header["parts"][0]["encoding"] = "zstd"
        raw_pub.sock.send_multipart([bad[0], json.dumps(header).encode(), bad[2]])
        raw_pub.sock.send_multipart(frame_message(2))
        assert sub.recv(timeout=5).header.seq == 2
        assert sub.stats.malformed - before.malformed == 1


def test_a_malformed_message_does_not_lose_the_streams_skip_count(
    raw_pub: RawPublisher, tcp_endpoint: str
) -> None:
    """Latest mode: recv took a message whose parts did not decode, and the count of the messages it
    had replaced went with it: the next message said skipped=0 after five were lost."""
    with Subscriber(tcp_endpoint, latest=True, topics=["cam0"]) as sub:
        raw_pub.connect(sub, "cam0")
        before = sub.stats
        for seq in range(1, 6):
            raw_pub.sock.send_multipart(frame_message(seq))
        bad = frame_message(6)
        header = json.loads(bad[1])
        header["parts"] = [{"name": "labels", "encoding": "png", "dtype": "uint8", "shape": [4, 6]}]
        raw_pub.sock.send_multipart([bad[0], json.dumps(header).encode(), _corrupt_png()])
        wait_received(sub, before.received + 6)
        with pytest.raises(StreamTimeout):  # takes the bad one, which fails to decode
            sub.recv(timeout=0.3)
        raw_pub.sock.send_multipart(frame_message(7))
        message = sub.recv(timeout=5)
        stats = sub.stats
    assert message.header.seq == 7
    assert message.skipped == 5  # seq 1..5, replaced; seq 6 is counted as malformed instead
    assert stats.skipped - before.skipped == 5 and stats.malformed - before.malformed == 1


# ------------------------------------------------------------------ 4. close() racing the socket


class _StuckPoll:
    """Makes zmq polls on threads whose name starts with ``prefix`` block until ``release``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        original = zmq.Poller.poll

        def poll(poller: zmq.Poller, timeout: float | None = None) -> list:
            if threading.current_thread().name.startswith(prefix) and not self.release.is_set():
                self.entered.set()
                self.release.wait(30)
            return original(poller, timeout)

        monkeypatch.setattr(zmq.Poller, "poll", poll)


@pytest.mark.parametrize("latest", [False, True])
def test_close_never_closes_the_socket_under_a_thread_still_using_it(
    latest: bool, tcp_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zmq sockets are not thread-safe. When the drain thread (or a direct recv) did not let go of
    the socket within close()'s wait, close() closed it under that thread all the same."""
    monkeypatch.setattr(subscriber_module, "_CLOSE_WAIT_S", 0.3, raising=False)
    stuck = _StuckPoll(monkeypatch, "subscriber:" if latest else "stuck-recv")
    sub = Subscriber(tcp_endpoint, latest=latest)
    outcome: list[BaseException] = []
    reader: threading.Thread | None = None
    if not latest:

        def wait() -> None:
            try:
                sub.recv(timeout=30)
            except BaseException as exc:
                outcome.append(exc)

        reader = threading.Thread(target=wait, name="stuck-recv")
        reader.start()
    assert stuck.entered.wait(5), "the poll was never reached"
    t0 = time.monotonic()
    sub.close()
    closed_in = time.monotonic() - t0
    socket_closed_under_thread = sub._socket.closed  # the thread is still inside poll
    stuck.release.set()
    deadline = time.monotonic() + 5
    while not (sub._socket.closed and sub._ctx.closed) and time.monotonic() < deadline:
        time.sleep(0.01)
    if reader is not None:
        reader.join(5)
        assert len(outcome) == 1 and isinstance(outcome[0], ConfigError), outcome
    assert closed_in < 2.0  # close() does not hang on the stuck thread
    assert not socket_closed_under_thread
    assert sub._socket.closed and sub._ctx.closed  # the thread closed it on its way out


def test_the_client_refuses_a_reply_with_too_many_frames(tcp_endpoint: str) -> None:
    """A reply is a header and its parts; a server (or anything bound there) answering with 200,000
    frames had them all read into Python before any check."""
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    rep.bind(tcp_endpoint)
    reply = [dumps({"proto": "rtseg/1", "type": "segment_reply", "status": "ok"}), *([b"xx"] * MANY_FRAMES)]

    def answer() -> None:
        if rep.poll(10_000):
            rep.recv_multipart()
            rep.send_multipart(reply)

    server = threading.Thread(target=answer)
    server.start()
    errors: list[BaseException] = []

    def request() -> None:
        with Client(tcp_endpoint, timeout=10, retries=0) as client:
            try:
                client.request([b"{}", b""])
            except ProtocolError as exc:
                errors.append(exc)

    try:
        peak = _peak_mb_while(request)
    finally:
        server.join(10)
        rep.close(linger=0)
        ctx.term()
    assert len(errors) == 1 and f"has {MANY_FRAMES + 1} frames; at most 17" in str(errors[0]), errors
    assert peak < 3.0, f"{peak:.1f} MB"


# ------------------------------------------------------------------ server: scheduler failures


class _FailingClose(Clockwork):
    """A scheduler whose close() raises, as AsyncAdaptive's does when a deep job failed unseen."""

    def close(self) -> None:
        raise RuntimeError("injected: the stream's last deep job failed")


def test_a_scheduler_failing_to_close_does_not_stop_the_server(
    small_engine: Engine, tcp_endpoint: str
) -> None:
    """Streams expire on the socket thread: a scheduler whose close() raised there ended that thread,
    and the server answered nothing more, silently. Restarting or evicting one made an unrelated
    request fail."""
    made: list[int] = []

    def scheduler() -> Clockwork:
        made.append(1)
        return Clockwork(4) if len(made) == 1 else _FailingClose(4)  # the first is Server's probe

    image = np.zeros((48, 64, 3), np.uint8)
    limits = ServerLimits(stream_ttl_s=0.2, max_streams=1)
    with Server(small_engine, bind=tcp_endpoint, scheduler=scheduler, limits=limits).start() as server:
        with Client(server.endpoint, timeout=5, retries=0) as client:
            client.segment(image, stream_id="a")
        with Client(server.endpoint, timeout=5, retries=0) as client:
            client.segment(image, stream_id="a")  # starts "a" again: the old scheduler is closed
            client.segment(image, stream_id="b")  # evicts "a" (max_streams=1)
            time.sleep(1.5)  # "b" expires on the socket thread
            reply = client.segment(image)
        stats = server.stats
    assert reply.is_keyframe
    assert stats.errors == {} and stats.ok == 4 and stats.streams == 0


def test_a_failure_dispatching_one_request_does_not_stop_the_server(
    small_engine: Engine, tcp_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception on the socket thread ended it: the server then answered nothing, silently."""
    original = Server._dispatch
    calls: list[int] = []

    def dispatch(self: Server, *args: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected: a bug in dispatch")
        original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Server, "_dispatch", dispatch)
    image = np.zeros((48, 64, 3), np.uint8)
    with Server(small_engine, bind=tcp_endpoint).start() as server:
        with Client(server.endpoint, timeout=1, retries=0) as client:
            with pytest.raises(StreamTimeout):  # the request that met the bug is lost
                client.segment(image)
            reply = client.segment(image)
        stats = server.stats
    assert reply.is_keyframe and len(calls) == 2
    assert stats.errors == {"internal_error": 1} and stats.ok == 1


class _StuckStep(Clockwork):
    """A scheduler whose step blocks until released: a backend call that hangs."""

    def __init__(self, release: threading.Event, entered: threading.Event) -> None:
        super().__init__(4)
        self.release, self.entered = release, entered

    def step(self, engine: Engine, image: object, *, index: int | None = None) -> object:  # type: ignore[override]
        self.entered.set()
        self.release.wait(30)
        return super().step(engine, image, index=index)


def test_close_honours_drain_s_when_a_worker_is_stuck(small_engine: Engine, tcp_endpoint: str) -> None:
    """close() joined the workers without a limit: one request stuck in the backend kept close (and
    `rtseg serve`'s shutdown on SIGTERM) waiting for good, whatever drain_s said."""
    release, entered = threading.Event(), threading.Event()
    limits = ServerLimits(drain_s=0.3)
    server = Server(
        small_engine, bind=tcp_endpoint, limits=limits, scheduler=lambda: _StuckStep(release, entered)
    ).start()
    errors: list[BaseException] = []

    def request() -> None:
        with Client(server.endpoint, timeout=20, retries=0) as client:
            try:
                client.segment(np.zeros((48, 64, 3), np.uint8), stream_id="a")
            except BaseException as exc:
                errors.append(exc)

    requester = threading.Thread(target=request)
    requester.start()
    try:
        assert entered.wait(10), "the request never reached the scheduler"
        t0 = time.monotonic()
        closer = threading.Thread(target=server.close)
        closer.start()
        closer.join(5)
        close_s = time.monotonic() - t0
        closed_in_time = not closer.is_alive()
    finally:
        release.set()
        requester.join(30)
    closer.join(10)
    assert closed_in_time, f"close() still waiting after {close_s:.1f} s (drain_s=0.3)"
    assert close_s < 2.0
    assert not closer.is_alive()
    deadline = time.monotonic() + 10
    while not server._ctx.closed and time.monotonic() < deadline:  # the last worker out closes it
        time.sleep(0.01)
    assert server._ctx.closed
