"""The SUB side: typed messages, malformed input, gaps, timeouts, and the slow-subscriber problem."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import threading
import time
import weakref
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import zmq

from rtseg.data.labels import CAMVID, CITYSCAPES, ClassSet
from rtseg.errors import ConfigError, StreamTimeout
from rtseg.result import SegResult
from rtseg.sink.packet import Packet
from rtseg.source.frame import Frame
from rtseg.stream import Subscriber, SubscriberOptions, open_publisher_sink
from rtseg.stream.protocol import FrameHeader, PartSpec, encode_frame_message


def frame_message(
    seq: int,
    stream: str = "cam0",
    labels: np.ndarray | None = None,
    *,
    classes: ClassSet | None = None,
    session: str | None = None,
) -> list[bytes]:
    """A well-formed message; ``session`` is written into the header JSON as another publisher would."""
    labels = np.full((4, 6), seq % 11, np.uint8) if labels is None else labels
    header = FrameHeader(
        stream=stream,
        seq=seq,
        frame_index=seq,
        capture_ts=time.time(),
        publish_ts=time.time(),
        is_keyframe=True,
        deep_age=0,
        image_shape=(8, 12, 3),
        parts=(PartSpec("labels", "raw", "uint8", labels.shape),),
        classes=classes,
    )
    frames = encode_frame_message(header, [labels.tobytes()])
    if session is not None:
        frames[1] = json.dumps({**json.loads(frames[1]), "session": session}).encode()
    return frames


def wait_received(sub: Subscriber, count: int) -> None:
    """Until the latest-mode thread has taken ``count`` well-formed messages in all."""
    deadline = time.monotonic() + 2
    while sub.stats.received < count:
        assert time.monotonic() < deadline, f"only {sub.stats.received} of {count} messages arrived"
        time.sleep(0.005)


class RawPublisher:
    """A bare PUB socket, to send exactly the bytes a test wants."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)

    def connect(self, sub: Subscriber, stream: str = "sync") -> None:
        deadline = time.monotonic() + 5
        while True:
            self.sock.send_multipart(frame_message(0, stream=stream))
            try:
                sub.recv(timeout=0.1)
                break
            except StreamTimeout:
                assert time.monotonic() < deadline, "subscriber never connected"
        while True:  # drain the extra sync messages
            try:
                sub.recv(timeout=0.2)
            except StreamTimeout:
                return

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def test_label_ids_past_the_known_class_set_are_malformed(tcp_endpoint: str) -> None:
    """The client refused such a reply; the subscriber passed the message on, with class ids that
    have no name or colour. Before the class set is known nothing can be checked."""
    raw = RawPublisher(tcp_endpoint)
    try:
        with Subscriber(tcp_endpoint) as sub:
            raw.connect(sub, stream="cam0")
            raw.sock.send_multipart(frame_message(1, classes=CAMVID))  # the class set arrives
            assert sub.recv(timeout=5).classes == CAMVID
            raw.sock.send_multipart(frame_message(2, labels=np.full((4, 6), len(CAMVID), np.uint8)))
            raw.sock.send_multipart(frame_message(3))
            assert sub.recv(timeout=5).header.seq == 3
            stats = sub.stats
    finally:
        raw.close()
    assert stats.malformed == 1 and f"expected class ids in 0..{len(CAMVID) - 1}" in stats.last_error


@pytest.mark.parametrize("latest", [False, True])
def test_malformed_messages_are_counted_and_skipped(latest: bool, tcp_endpoint: str) -> None:
    raw = RawPublisher(tcp_endpoint)
    good_header = json.loads(frame_message(5)[1])
    bad_png = {
        **good_header,
        "parts": [{"name": "labels", "encoding": "png", "dtype": "uint8", "shape": [4, 6]}],
    }
    garbage = [
        [b"cam0"],  # no header
        [b"cam0", b"\x00not json"],
        [b"cam0", json.dumps({**good_header, "proto": "rtseg/9"}).encode()],
        [b"cam0", json.dumps(good_header).encode()],  # the part frame is missing
        [b"cam0", json.dumps(bad_png).encode(), b"PNG? no"],  # undecodable part: found in recv
        [b"other", json.dumps(good_header).encode(), b"\0" * 24],  # topic and stream disagree
    ]
    try:
        with Subscriber(tcp_endpoint, latest=latest) as sub:
            raw.connect(sub)
            received = []
            for i, bad in enumerate(garbage):
                raw.sock.send_multipart(bad)
                raw.sock.send_multipart(frame_message(10 + i))
                received.append(sub.recv(timeout=5))
            stats = sub.stats
    finally:
        raw.close()
    assert [m.header.seq for m in received] == [10, 11, 12, 13, 14, 15]
    assert all(int(m.labels[0, 0]) == m.header.seq % 11 for m in received)
    if latest:
        # Parts are decoded only for messages recv takes: the undecodable-PNG message is counted
        # as malformed if recv took it, or as skipped if the next good message replaced it first.
        # Every other kind is rejected on arrival.
        assert stats.skipped <= 1
        assert stats.malformed + stats.skipped == len(garbage)
    else:
        assert stats.malformed == len(garbage)
    assert stats.last_error is not None


@pytest.mark.parametrize("latest", [False, True])
def test_a_source_over_the_pixel_limit_is_readable_when_its_parts_are_small(
    latest: bool, tcp_endpoint: str
) -> None:
    """image_shape (the source frame's size, metadata) was held to the pixel limit: a publisher of
    an 18 MP camera sending 4x6 labels was unreadable. Only decoded parts meet the limit."""
    raw = RawPublisher(tcp_endpoint)
    big = frame_message(1)
    big[1] = json.dumps({**json.loads(big[1]), "image_shape": [3000, 6000, 3]}).encode()
    try:
        with Subscriber(tcp_endpoint, latest=latest) as sub:
            raw.connect(sub)
            raw.sock.send_multipart(big)
            message = sub.recv(timeout=5)
            stats = sub.stats
    finally:
        raw.close()
    assert message.header.image_shape == (3000, 6000, 3) and message.labels.shape == (4, 6)
    assert stats.malformed == 0


@pytest.mark.parametrize("latest", [False, True])
def test_a_timeout_after_only_malformed_messages_says_they_were_malformed(
    latest: bool, tcp_endpoint: str
) -> None:
    """It said 'no message ... (nothing published, ...)' when three had arrived, all malformed."""
    raw = RawPublisher(tcp_endpoint)
    newer = [
        b"cam0",
        json.dumps({**json.loads(frame_message(5)[1]), "proto": "rtseg/9"}).encode(),
        b"\0" * 24,
    ]
    try:
        with Subscriber(tcp_endpoint, latest=latest) as sub:
            raw.connect(sub)
            for _ in range(3):
                raw.sock.send_multipart(newer)
            with pytest.raises(StreamTimeout) as info:
                sub.recv(timeout=0.5)
            # and once a good message is handed out, a later timeout counts from there
            raw.sock.send_multipart(frame_message(6))
            sub.recv(timeout=5)
            with pytest.raises(StreamTimeout, match="nothing published"):
                sub.recv(timeout=0.2)
    finally:
        raw.close()
    text = str(info.value)
    assert "3 message(s) arrived since the last message handed out and were all malformed" in text, text
    assert "unsupported_version" in text and "nothing published" not in text


def test_sequence_gaps_and_restarts_are_counted(tcp_endpoint: str) -> None:
    raw = RawPublisher(tcp_endpoint)
    try:
        with Subscriber(tcp_endpoint, topics=["cam0"]) as sub:
            raw.connect(sub, "cam0")  # seq 0 until connected
            for seq in (1, 2, 6, 7, 3):  # 3..5 lost; then the publisher restarted (7 -> 3)
                raw.sock.send_multipart(frame_message(seq))
                assert sub.recv(timeout=5).header.seq == seq
            stats = sub.stats
    finally:
        raw.close()
    assert stats.gaps == 3 and stats.restarts == 1


def test_recv_times_out(tcp_endpoint: str) -> None:
    for latest in (False, True):
        with Subscriber(tcp_endpoint, latest=latest) as sub:
            t0 = time.monotonic()
            with pytest.raises(StreamTimeout, match=r"no message from tcp://127\.0\.0\.1"):
                sub.recv(timeout=0.3)
            assert 0.29 <= time.monotonic() - t0 < 1.5


@pytest.mark.parametrize("latest", [False, True])
def test_close_from_another_thread_ends_a_blocked_recv(latest: bool, tcp_endpoint: str) -> None:
    sub = Subscriber(tcp_endpoint, latest=latest)
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            sub.recv()  # no publisher: blocks until closed
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    sub.close()
    thread.join(5.0)
    assert not thread.is_alive() and time.monotonic() - t0 < 2.0
    assert len(outcome) == 1 and isinstance(outcome[0], ConfigError), outcome
    assert "closed while waiting" in str(outcome[0])


def test_recv_from_two_threads_gets_whole_messages(tcp_endpoint: str) -> None:
    """Without latest mode recv reads the socket itself: two threads doing so at once interleaved
    the frames of different messages (counted as malformed) or aborted the process inside libzmq
    ("Bad address (src/fq.cpp:56)")."""
    raw = RawPublisher(tcp_endpoint)
    sent = 2000
    taken: list[list[int]] = [[], []]
    try:
        with Subscriber(tcp_endpoint, topics=["cam0"], rcvhwm=sent) as sub:
            raw.connect(sub, "cam0")
            stop = threading.Event()

            def take(k: int) -> None:
                while not stop.is_set():
                    with contextlib.suppress(StreamTimeout):
                        taken[k].append(sub.recv(timeout=0.1).header.seq)

            threads = [threading.Thread(target=take, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for seq in range(1, sent + 1):
                raw.sock.send_multipart(frame_message(seq))
            deadline = time.monotonic() + 5
            while sum(map(len, taken)) < sent and time.monotonic() < deadline:
                time.sleep(0.01)
            stop.set()
            for t in threads:
                t.join(5)
            stats = sub.stats
    finally:
        raw.close()
    assert stats.malformed == 0, stats.last_error
    both = sorted(taken[0] + taken[1])
    assert both == sorted(set(both)) and len(both) >= 0.9 * sent  # each message once
    assert all(seqs == sorted(seqs) for seqs in taken)


def test_options_in_a_subscriber_address_are_refused_by_name(tcp_endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"has options \(\?parts=labels\); a subscriber takes none"):
        Subscriber(f"zmq://{tcp_endpoint}?parts=labels")


def test_a_single_topic_string_is_refused(tcp_endpoint: str) -> None:
    # iterated, "front" would subscribe to the prefixes f, r, o, n and t: streams "rear" and "tail" too
    with pytest.raises(ConfigError, match=r"topics must be a list of stream ids, got the string 'front'"):
        Subscriber(tcp_endpoint, topics="front")  # type: ignore[arg-type]
    # bytes were iterated into ints: "topics[0] must be a str ..., got 102"
    with pytest.raises(ConfigError, match=r"got the bytes b'front'; use topics=\['front'\]"):
        Subscriber(tcp_endpoint, topics=b"front")  # type: ignore[arg-type]


def test_latest_mode_keeps_only_the_newest(tcp_endpoint: str) -> None:
    raw = RawPublisher(tcp_endpoint)
    try:
        with Subscriber(tcp_endpoint, latest=True, topics=["cam0"]) as sub:
            raw.connect(sub, "cam0")
            for seq in range(1, 21):
                raw.sock.send_multipart(frame_message(seq))
            time.sleep(0.5)  # the consumer is busy; the background thread keeps draining
            message = sub.recv(timeout=5)
            stats = sub.stats
    finally:
        raw.close()
    assert message.header.seq == 20
    assert message.skipped == 19 and stats.skipped >= 19


def test_latest_mode_keeps_the_newest_of_each_stream(tcp_endpoint: str) -> None:
    """One newest message for all streams starved a slow stream: a fast one always replaced it."""
    raw = RawPublisher(tcp_endpoint)
    try:
        with Subscriber(tcp_endpoint, latest=True) as sub:
            raw.connect(sub)
            before = sub.stats
            raw.sock.send_multipart(frame_message(1, "slow"))
            for seq in range(1, 21):
                raw.sock.send_multipart(frame_message(seq, "fast"))
            wait_received(sub, before.received + 21)
            taken = [sub.recv(timeout=1) for _ in range(2)]
            with pytest.raises(StreamTimeout):
                sub.recv(timeout=0.05)
            raw.sock.send_multipart(frame_message(21, "fast"))
            raw.sock.send_multipart(frame_message(2, "slow"))
            wait_received(sub, before.received + 23)
            taken += [sub.recv(timeout=1) for _ in range(2)]
            stats = sub.stats
    finally:
        raw.close()
    # the stream that has waited longest goes first; skipped counts are per stream
    assert [(m.topic, m.header.seq, m.skipped) for m in taken] == [
        ("slow", 1, 0),
        ("fast", 20, 19),
        ("fast", 21, 0),
        ("slow", 2, 0),
    ]
    assert stats.skipped - before.skipped == 19
    assert stats.delivered - before.delivered == 4 and stats.received - before.received == 23


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd")
@pytest.mark.parametrize("latest", [False, True])
def test_a_subscriber_dropped_without_close_is_freed(latest: bool, tcp_endpoint: str) -> None:
    """The latest-mode thread ran a bound method, which kept a subscriber dropped without close()
    alive for ever: its thread, socket and context (6 descriptors) stayed, still connected and
    waking every 50 ms, until 'Too many open files'. Its thread now ends and closes them."""
    raw = RawPublisher(tcp_endpoint)
    try:
        gc.collect()
        threads, fds = threading.active_count(), _open_fds()
        refs = []
        for _ in range(4):
            sub = Subscriber(tcp_endpoint, latest=latest)
            deadline = time.monotonic() + 5
            while True:  # a message taken: the thread (latest mode) has been through its drain
                raw.sock.send_multipart(frame_message(0))
                with contextlib.suppress(StreamTimeout):
                    sub.recv(timeout=0.1)
                    break
                assert time.monotonic() < deadline, "subscriber never connected"
            refs.append(weakref.ref(sub))
            del sub
        gc.collect()
        deadline = time.monotonic() + 3  # a poll period, and the publisher seeing the disconnects
        while (threading.active_count(), _open_fds()) != (threads, fds) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [ref() for ref in refs] == [None] * 4
        assert not [t.name for t in threading.enumerate() if t.name == f"subscriber:{tcp_endpoint}"]
        assert (threading.active_count(), _open_fds()) == (threads, fds)
    finally:
        raw.close()


@pytest.mark.parametrize("latest", [False, True])
def test_the_streams_tracked_are_bounded(latest: bool, tcp_endpoint: str) -> None:
    """Per-stream state (and, in latest mode, one message per stream) grew with every stream id a
    publisher invented; past max_streams the stream heard from least recently is forgotten."""
    raw = RawPublisher(tcp_endpoint)
    try:
        with Subscriber(tcp_endpoint, latest=latest, max_streams=4) as sub:
            raw.connect(sub)  # stream "sync"
            before = sub.stats
            for k in range(10):
                raw.sock.send_multipart(frame_message(5, f"s{k}"))
                if not latest:
                    assert sub.recv(timeout=1).topic == f"s{k}"
            wait_received(sub, before.received + 10)
            taken = []
            with contextlib.suppress(StreamTimeout):
                while True:
                    taken.append(sub.recv(timeout=0.1).topic)
            raw.sock.send_multipart(frame_message(9, "s0"))  # forgotten: a new stream, not a gap of 3
            assert sub.recv(timeout=1).topic == "s0"
            stats = sub.stats
    finally:
        raw.close()
    if latest:
        assert taken == ["s6", "s7", "s8", "s9"]
        assert stats.skipped - before.skipped == 6  # s0..s5 were forgotten before recv took them
    else:
        assert taken == []
    assert stats.evicted == 8  # sync, s0..s5, then s6 for s0's comeback
    assert stats.streams == 4 and stats.gaps == 0


def test_max_streams_is_checked(tcp_endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"max_streams must be an integer >= 1, got 0"):
        Subscriber(tcp_endpoint, max_streams=0)


@pytest.mark.parametrize("latest", [False, True])
def test_a_restarted_publisher_never_gets_its_predecessors_classes(latest: bool, tcp_endpoint: str) -> None:
    """The class set cached per stream outlived a publisher restart: a new publisher (another
    model) whose first messages omit classes was labelled with the old one's class set."""
    raw = RawPublisher(tcp_endpoint)
    sent = [
        (1, "a", CAMVID),
        (2, "a", None),
        (9, "b", None),  # restarted: seq 0..8 of session b were missed, a larger seq all the same
        (10, "b", CITYSCAPES),
        (11, "b", None),
    ]
    try:
        with Subscriber(tcp_endpoint, latest=latest) as sub:
            raw.connect(sub)
            got = []
            for seq, session, classes in sent:
                raw.sock.send_multipart(frame_message(seq, classes=classes, session=session))
                got.append(sub.recv(timeout=1).classes)
            stats = sub.stats
    finally:
        raw.close()
    assert got == [CAMVID, CAMVID, None, CITYSCAPES, CITYSCAPES]
    assert stats.restarts == 1 and stats.gaps == 0  # 2 -> 9 is a new session, not 6 lost messages


def test_a_sequence_that_goes_back_is_a_restart(tcp_endpoint: str) -> None:
    """Without a session id (another implementation) a smaller or repeated seq is the restart."""
    raw = RawPublisher(tcp_endpoint)
    try:
        with Subscriber(tcp_endpoint) as sub:
            raw.connect(sub)
            got = []
            for seq, classes in ((0, CAMVID), (1, None), (2, None), (2, None), (4, None), (0, CITYSCAPES)):
                raw.sock.send_multipart(frame_message(seq, classes=classes))
                got.append(sub.recv(timeout=1).classes)
            stats = sub.stats
    finally:
        raw.close()
    assert got == [CAMVID, CAMVID, CAMVID, None, None, CITYSCAPES]
    assert stats.restarts == 2 and stats.gaps == 1  # 2 -> 4 lost seq 3


@pytest.mark.parametrize("latest", [False, True])
def test_timeouts_must_be_seconds(latest: bool, tcp_endpoint: str) -> None:
    """A NaN timeout never expired (recv hung); inf raised OverflowError in latest mode."""
    with Subscriber(tcp_endpoint, latest=latest) as sub:
        for bad in (float("nan"), -1.0, "1"):
            outcome: list[BaseException] = []

            def call(timeout: object = bad, outcome: list[BaseException] = outcome) -> None:
                try:
                    sub.recv(timeout=timeout)  # type: ignore[arg-type]
                except BaseException as exc:
                    outcome.append(exc)

            thread = threading.Thread(target=call, daemon=True)
            thread.start()
            thread.join(1.0)
            assert not thread.is_alive(), f"recv(timeout={bad!r}) hung"
            assert len(outcome) == 1 and isinstance(outcome[0], ConfigError), outcome
            assert f"timeout must be None or a number of seconds >= 0, got {bad!r}" in str(outcome[0])
        # inf is no limit, as None is: close from another thread still ends the wait
        threading.Timer(0.2, sub.close).start()
        with pytest.raises(ConfigError, match="closed while waiting"):
            sub.recv(timeout=float("inf"))


@pytest.mark.parametrize("latest", [False, True])
def test_numpy_timeouts_are_seconds(latest: bool, tcp_endpoint: str) -> None:
    """recv(timeout=np.float32(0.1)) was refused as not a number, while Client takes NumPy numbers."""
    with Subscriber(tcp_endpoint, latest=latest) as sub:
        for timeout in (np.float32(0.1), np.float64(0.1), np.int64(0)):
            with pytest.raises(StreamTimeout):
                sub.recv(timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=r"got np\.True_|got True"):
            sub.recv(timeout=np.True_)  # type: ignore[arg-type]


@pytest.mark.parametrize("latest", [False, True])
def test_a_timeout_past_what_a_thread_can_wait_is_no_limit(latest: bool, tcp_endpoint: str) -> None:
    """1e10 s (rtseg view --timeout 1e10) raised OverflowError in latest mode."""
    with Subscriber(tcp_endpoint, latest=latest) as sub:
        threading.Timer(0.2, sub.close).start()
        with pytest.raises(ConfigError, match="closed while waiting"):
            sub.recv(timeout=threading.TIMEOUT_MAX * 2)


@pytest.mark.parametrize("latest", [False, True])
def test_exact_topics_drop_the_longer_stream_ids_a_prefix_lets_in(latest: bool, tcp_endpoint: str) -> None:
    """ZeroMQ's SUBSCRIBE is a prefix match: topics=["cam1"] also receives cam10 and cam1x, as
    documented; exact_topics=True (what rtseg view --topic uses) receives cam1 alone."""
    raw = RawPublisher(tcp_endpoint)
    try:
        with (
            Subscriber(tcp_endpoint, topics=["cam1"], latest=latest) as prefix,
            Subscriber(tcp_endpoint, topics=["cam1"], latest=latest, exact_topics=True) as exact,
        ):
            raw.connect(prefix, "cam1")
            raw.connect(exact, "cam1")
            for sub in (prefix, exact):  # the sync messages each connect sent reached both
                with contextlib.suppress(StreamTimeout):
                    while True:
                        sub.recv(timeout=0.2)
            for seq, stream in enumerate(("cam10", "cam1x", "cam1", "cam10"), start=1):
                raw.sock.send_multipart(frame_message(seq, stream=stream))
                if latest:
                    time.sleep(0.05)  # not replaced by the next: each stream keeps its newest
            got_prefix = sorted((m.topic, m.header.seq) for m in (prefix.recv(timeout=5) for _ in range(3)))
            got_exact = [(m.topic, m.header.seq) for m in (exact.recv(timeout=5),)]
            with pytest.raises(StreamTimeout):
                exact.recv(timeout=0.3)
            stats = exact.stats
    finally:
        raw.close()
    # latest mode keeps each stream's newest: cam10's second message replaced its first
    assert got_prefix == [("cam1", 3), ("cam10", 4 if latest else 1), ("cam1x", 2)]
    assert got_exact == [("cam1", 3)]
    assert stats.malformed == 0 and stats.streams == 1  # dropped unparsed, not tracked


def test_exact_topics_must_be_stream_ids(tcp_endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"topics\[0\] must be a stream id \(1\.\.64 characters.*got ''"):
        Subscriber(tcp_endpoint, topics=[""], exact_topics=True)


def test_socket_option_values_past_their_c_types_are_refused(tcp_endpoint: str) -> None:
    """ZMQ_RCVHWM is a C int and ZMQ_MAXMSGSIZE an int64: larger values raised OverflowError."""
    with pytest.raises(ConfigError, match=r"rcvhwm must be an integer in 1\.\.2\*\*31-1, got 2147483648"):
        Subscriber(tcp_endpoint, rcvhwm=2**31)
    with pytest.raises(ConfigError, match=rf"max_bytes must be an integer in 1\.\.2\*\*63-1, got {2**63}"):
        Subscriber(tcp_endpoint, max_bytes=2**63)
    with pytest.raises(ConfigError, match=r"max_bytes must be an integer in 1\.\.2\*\*63-1, got 0"):
        Subscriber(tcp_endpoint, max_bytes=0)


def test_topics_must_be_strings(tcp_endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"topics\[1\] must be a str \(a stream id prefix\), got b'cam1'"):
        Subscriber(tcp_endpoint, topics=["cam0", b"cam1"])  # type: ignore[list-item]


# ------------------------------------------------------------------ acceptance 2: the slow subscriber


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class SlowRun:
    frames: int
    nominal_s: float
    elapsed_s: float
    write_ms_p50: float
    write_ms_p99: float
    sink_dropped: int
    delivered: int
    skipped: int
    gaps: int
    max_age: int
    ages: list[int]
    stale: list[int]
    rss_growth_mb: float
    message_mb: float


def run_slow_subscriber(endpoint: str, frames: int, *, latest: bool, fps: float = 30.0) -> SlowRun:
    """A pipeline loop writing ``frames`` packets at ``fps`` into the zmq:// sink, with a
    subscriber that sleeps 50 ms per message. Messages carry the raw 240x320 frame (230 kB), so
    an unbounded backlog would show in memory."""
    rng = np.random.default_rng(0)
    images = [
        cv2.resize(
            rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (320, 240), interpolation=cv2.INTER_LINEAR
        )
        for _ in range(4)
    ]
    labels = [
        cv2.resize(rng.integers(0, 11, (6, 8), dtype=np.uint8), (160, 120), interpolation=cv2.INTER_NEAREST)
        for _ in range(4)
    ]

    def packet(i: int) -> Packet:
        frame = Frame(images[i % 4], i, time.time(), time.perf_counter(), "test")
        return Packet(frame, SegResult(labels[i % 4], i, i % 5 == 0, i % 5, CAMVID, {"low": 1.0}))

    sink = open_publisher_sink(
        f"zmq://{endpoint}",
        parts=("labels", "overlay", "frame"),
        frame_encoding="raw",
        queue_size=2,
        policy="drop",
    )
    ages: list[int] = []
    stale: list[int] = []  # seqs handed out after a newer message had had a whole sleep to arrive
    before_sleep = -1
    first = threading.Event()
    stop = threading.Event()
    errors: list[BaseException] = []

    def consume(sub: Subscriber) -> None:
        nonlocal before_sleep
        try:
            while not stop.is_set():
                # Freshness is judged against the publisher's counter when recv is called, not
                # after it returned: the time recv and this thread take to run is not backlog.
                newest = sink.publisher.stats.sent - 1  # seq of the newest message published
                try:
                    message = sub.recv(timeout=0.5)
                except StreamTimeout:
                    continue
                if first.is_set():
                    seq = message.header.seq
                    ages.append(newest - seq)
                    # older than what was published before this consumer's last 50 ms sleep:
                    # not a message still in transit, one a newer message should have replaced
                    if newest - seq > 2 and seq < before_sleep:
                        stale.append(seq)
                first.set()
                before_sleep = sink.publisher.stats.sent - 1
                time.sleep(0.05)  # the slow consumer
        except BaseException as exc:
            errors.append(exc)

    write_ms: list[float] = []
    rss: list[int] = []
    with Subscriber(endpoint, latest=latest) as sub:
        consumer = threading.Thread(target=consume, args=(sub,), daemon=True)
        consumer.start()
        deadline = time.monotonic() + 5
        i = 0
        while not first.is_set():  # until the subscription is in place
            sink.write(packet(i))
            i += 1
            time.sleep(1 / fps)
            assert time.monotonic() < deadline, "subscriber never connected"
        period = 1.0 / fps
        t_start = time.perf_counter()
        for k in range(frames):
            p = packet(i + k)
            t0 = time.perf_counter()
            sink.write(p)
            write_ms.append((time.perf_counter() - t0) * 1000)
            if k % 10 == 0:
                rss.append(_rss_bytes())
            next_tick = t_start + (k + 1) * period
            time.sleep(max(0.0, next_tick - time.perf_counter()))
        elapsed = time.perf_counter() - t_start
        time.sleep(0.2)
        stop.set()
        consumer.join(5)
        stats = sub.stats
    sink_stats = sink.close()
    assert not errors, errors
    baseline = rss[min(3, len(rss) - 1)]  # after 30 frames: queues and caches are warm
    return SlowRun(
        frames=frames,
        nominal_s=frames * period,
        elapsed_s=elapsed,
        write_ms_p50=float(np.percentile(write_ms, 50)),
        write_ms_p99=float(np.percentile(write_ms, 99)),
        sink_dropped=sink_stats.dropped,
        delivered=stats.delivered,
        skipped=stats.skipped,
        gaps=stats.gaps,
        max_age=max(ages),
        ages=ages,
        stale=stale,
        rss_growth_mb=(max(rss) - baseline) / 2**20,
        message_mb=(images[0].nbytes + labels[0].nbytes) / 2**20,
    )


def check_slow_run(run: SlowRun) -> None:
    print(
        f"\nslow subscriber, {run.frames} frames: loop {run.elapsed_s:.2f} s "
        f"(nominal {run.nominal_s:.2f} s), "
        f"write p50 {run.write_ms_p50:.3f} ms p99 {run.write_ms_p99:.3f} ms, sink drops {run.sink_dropped}, "
        f"delivered {run.delivered}, skipped {run.skipped}, gaps {run.gaps}, max age {run.max_age}, "
        f"stale {len(run.stale)}, "
        f"RSS growth {run.rss_growth_mb:.1f} MB (an unbounded backlog: {run.frames * run.message_mb:.0f} MB)"
    )
    # the pipeline's loop is not slowed: hand-off is a queue put, the loop keeps its rate
    assert run.write_ms_p99 < 10.0
    assert run.elapsed_s < run.nominal_s * 1.05 + 0.5
    # the sink thread kept up: publishing never waited for the subscriber
    assert run.sink_dropped == 0
    # the consumer got fresh frames, about one per 50 ms, and memory did not follow the backlog.
    # Fresh: at most 2 frames behind the newest published when recv was called, or, when the
    # machine is loaded and delivery lags, no older than what was published before the consumer's
    # previous sleep (a backlog falls further behind with every message and fails both).
    assert not run.stale, (run.stale, run.ages)
    assert run.delivered >= 0.6 * run.nominal_s / 0.05
    assert run.rss_growth_mb < 40


def test_slow_subscriber_latest_only(tcp_endpoint: str) -> None:
    check_slow_run(run_slow_subscriber(tcp_endpoint, 120, latest=True))


def test_slow_subscriber_without_latest_falls_behind(tcp_endpoint: str) -> None:
    """The control: a plain subscriber with the same consumer works through stale frames."""
    run = run_slow_subscriber(tcp_endpoint, 120, latest=False)
    print(f"\nwithout latest=True: max age {run.max_age}, ages {run.ages[-5:]}, stale {len(run.stale)}")
    assert run.max_age > 2
    assert len(run.stale) > len(run.ages) // 2, (run.stale, run.ages)  # the freshness check fails


@pytest.mark.slow
def test_slow_subscriber_latest_only_1000_frames(tcp_endpoint: str) -> None:
    check_slow_run(run_slow_subscriber(tcp_endpoint, 1000, latest=True))


def test_tcp_keepalive_finds_a_connection_that_died_unclosed(tcp_endpoint: str) -> None:
    """A SUB socket never sends: without keepalive probes, a connection whose publisher's host lost
    power looks alive for good, and the subscriber never reconnects when the host is back (checked
    with network namespaces: silent for 40 s without; receiving again within 5 s with)."""
    with Subscriber(tcp_endpoint) as sub:
        socket = sub._socket  # the option values are the behaviour under test
        keepalive = [
            socket.getsockopt(option)
            for option in (
                zmq.TCP_KEEPALIVE,
                zmq.TCP_KEEPALIVE_IDLE,
                zmq.TCP_KEEPALIVE_INTVL,
                zmq.TCP_KEEPALIVE_CNT,
            )
        ]
        heartbeat = socket.getsockopt(zmq.HEARTBEAT_IVL)
    assert keepalive == [1, 2, 1, 3]
    # not ZMTP heartbeats: with them, a subscriber whose queue is full aborts inside libzmq 4.3
    # (zeromq/libzmq#3937: "Assertion failed: _input_stopped")
    assert heartbeat == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # compared with a bound, a string raised a bare TypeError ('<=' not supported)
        ({"rcvhwm": "4"}, r"rcvhwm must be an integer in 1\.\.2\*\*31-1, got '4' \(str\)"),
        ({"max_bytes": 1.5}, r"max_bytes must be an integer in 1\.\.2\*\*63-1, got 1\.5 \(float\)"),
        # not checked at all: 0 refused every message as too large, "big" failed per message
        ({"max_pixels": 0}, r"max_pixels must be an integer >= 1, got 0"),
        ({"max_pixels": "big"}, r"max_pixels must be an integer >= 1, got 'big' \(str\)"),
        ({"max_streams": "2"}, r"max_streams must be an integer >= 1, got '2' \(str\)"),
        # any truthy value was latest mode: "no" too
        ({"latest": "no"}, r"latest must be True or False, got 'no' \(str\)"),
        ({"exact_topics": 1}, r"exact_topics must be True or False, got 1 \(int\)"),
        ({"topics": 5}, r"topics must be None or a list of stream ids, got 5"),
        ({"curve_keys": 5}, r"curve_keys must be None or a key folder path, got 5"),
    ],
)
def test_subscriber_options_are_checked_by_name(options: dict, message: str, tcp_endpoint: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Subscriber(tcp_endpoint, **options)
    if "curve_keys" not in options:  # the options alone, as the dataclass the keywords fill
        with pytest.raises(ConfigError, match=message):
            SubscriberOptions(**options)


def test_subscriber_keeps_its_options_checked(tcp_endpoint: str) -> None:
    """The keywords stay the API; they are gathered in a SubscriberOptions (topics as a tuple: a
    generator was used up by the checks and then subscribed to nothing)."""
    with Subscriber(tcp_endpoint, topics=(t for t in ["cam0"]), rcvhwm=np.int64(8), latest=True) as sub:
        assert sub.options == SubscriberOptions(topics=("cam0",), rcvhwm=8, latest=True)
        assert sub.options.latest is True
        pub = zmq.Context.instance().socket(zmq.PUB)
        pub.bind(tcp_endpoint)
        try:
            deadline = time.monotonic() + 5
            while True:  # subscribed to cam0: its messages arrive, once the connection is up
                pub.send_multipart(frame_message(0))
                with contextlib.suppress(StreamTimeout):
                    assert sub.recv(timeout=0.1).topic == "cam0"
                    break
                assert time.monotonic() < deadline
        finally:
            pub.close(linger=0)
