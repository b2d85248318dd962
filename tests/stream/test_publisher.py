"""The PUB side and the zmq:// sink, over real loopback sockets (tcp and ipc)."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg.data.labels import CAMVID, CITYSCAPES
from rtseg.errors import ConfigError, InputTypeError
from rtseg.result import SegResult
from rtseg.sink.packet import Packet
from rtseg.source.frame import Frame
from rtseg.stream import Publisher, PublishOptions, Subscriber, open_publisher_sink
from rtseg.stream.publisher import carries_classes, parse_zmq_uri


def make_packet(index: int, rng: np.random.Generator, size: tuple[int, int] = (96, 128)) -> Packet:
    h, w = size
    # smooth images (JPEG-friendly) and blocky labels, different for every packet
    image = cv2.resize(
        rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_LINEAR
    )
    frame = Frame(image, index, time.time(), time.perf_counter(), "test")
    small = rng.integers(0, len(CAMVID), (6, 8), dtype=np.uint8)
    labels = cv2.resize(small, (w // 2, h // 2), interpolation=cv2.INTER_NEAREST)
    result = SegResult(labels, index, index % 3 == 0, index % 3, CAMVID, {"low": 1.25, "head": 0.5 + index})
    return Packet(frame, result)


def wait_for_subscription(pub: Publisher, sub: Subscriber, packet: Packet) -> int:
    """PUB/SUB connects asynchronously: publish until messages get through, then drain them.
    Returns how many were received."""
    deadline = time.monotonic() + 5
    while True:
        pub.publish(packet.frame, packet.result, packet.overlay())
        try:
            sub.recv(timeout=0.1)
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "subscriber never connected"
    received = 1
    while True:
        try:
            sub.recv(timeout=0.2)
            received += 1
        except TimeoutError:
            return received


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_round_trip_keeps_labels_exact_and_header_intact(
    transport: str, tcp_endpoint: str, ipc_endpoint: str
) -> None:
    endpoint = tcp_endpoint if transport == "tcp" else ipc_endpoint
    rng = np.random.default_rng(0)
    # Sent back to back (well over 1 kHz), a queue of 2 can lose messages: libzmq's PUB sees the
    # subscriber's queue credit only when it next processes commands, which it throttles. This test
    # is about what arrives, so the queue is deep enough for the burst.
    options = PublishOptions(
        parts=("labels", "overlay", "frame"), frame_encoding="raw", stream="front", classes_every=4, sndhwm=16
    )
    with Publisher(endpoint, options) as pub, Subscriber(endpoint, topics=["front"]) as sub:
        warmup = wait_for_subscription(pub, sub, make_packet(0, rng))
        sent = [make_packet(i, rng) for i in range(1, 9)]
        received = []
        for packet in sent:
            pub.publish(packet.frame, packet.result, packet.overlay())
            received.append(sub.recv(timeout=5))
        stats = sub.stats
    for packet, message in zip(sent, received, strict=True):
        h = message.header
        assert h.stream == "front" and message.topic == "front"
        assert h.frame_index == packet.result.frame_index
        assert h.is_keyframe == packet.result.is_keyframe and h.deep_age == packet.result.deep_age
        assert h.capture_ts == packet.frame.timestamp
        assert h.capture_ts <= h.publish_ts <= message.recv_ts
        assert dict(h.timings_ms) == dict(packet.result.timings)
        assert h.image_shape == (96, 128, 3)
        assert [p.name for p in h.parts] == ["labels", "overlay", "frame"]
        np.testing.assert_array_equal(message.labels, packet.result.labels)
        np.testing.assert_array_equal(message.frame, packet.frame.image)
        assert message.overlay.shape == (96, 128, 3)
        assert cv2.PSNR(message.overlay, packet.overlay()) > 30  # JPEG
        assert message.classes in (None, CAMVID)  # None until a header carries the class set
    # the class set rides on seq 0, 1, 2 and then every 4th: the others get it from the cache
    assert [m.header.classes is not None for m in received] == [
        carries_classes(m.header.seq, 4) for m in received
    ]
    assert sum(m.header.seq % 4 == 0 for m in received) == 2
    first = min(m.header.seq for m in received if m.header.classes is not None)
    assert all(m.classes == CAMVID for m in received if m.header.seq >= first)
    assert stats.gaps == 0 and stats.malformed == 0 and stats.delivered == warmup + 8


def test_class_set_change_is_sent_at_once(tcp_endpoint: str) -> None:
    rng = np.random.default_rng(1)
    # sndhwm: messages sent back to back can be lost to a queue of 2 (see the round trip test)
    options = PublishOptions(parts=("labels",), classes_every=1000, sndhwm=16)
    with Publisher(tcp_endpoint, options) as pub, Subscriber(tcp_endpoint) as sub:
        wait_for_subscription(pub, sub, make_packet(0, rng))
        p = make_packet(1, rng)
        # Past the first messages, which carry the class set (carries_classes), up to a message
        # that would not carry it either: then only the change can send it.
        for _ in range(20):
            pub.publish(p.frame, p.result)
            last = sub.recv(timeout=5).header
            if last.classes is None and not carries_classes(last.seq + 1, 1000):
                break
        else:
            raise AssertionError("no message without the class set was followed by another one")
        changed = SegResult(p.result.labels, 2, True, 0, CITYSCAPES)
        pub.publish(p.frame, changed)
        message = sub.recv(timeout=5)
    assert message.header.seq == last.seq + 1 and not carries_classes(message.header.seq, 1000)
    assert message.header.classes == CITYSCAPES and message.classes == CITYSCAPES


def test_classes_ride_on_the_first_messages_and_then_every_n() -> None:
    """Only seq 0 and every N-th carried the class set: a subscriber that connected a few messages
    late (as every subscriber of a restarted publisher does, ~100 ms to reconnect) waited N."""
    assert [s for s in range(70) if carries_classes(s, 30)] == [0, 1, 2, 4, 8, 16, 30, 60]
    assert [s for s in range(5) if carries_classes(s, 1)] == [0, 1, 2, 3, 4]
    assert [s for s in range(1100) if carries_classes(s, 1000)] == [
        0,
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        512,
        1000,
    ]


def test_a_restarted_publisher_is_a_new_session_with_its_own_classes(tcp_endpoint: str) -> None:
    """A restarted publisher (another model) reuses the endpoint and the stream id. Its first
    messages are lost while the subscriber reconnects, and the next ones omit classes: they were
    labelled with the old publisher's class set, and its larger seq counted as lost messages."""
    rng = np.random.default_rng(5)
    packet = make_packet(0, rng)
    # a deep queue: messages lost to the high-water mark would read as gaps (see the round trip test)
    options = PublishOptions(parts=("labels",), classes_every=1000, sndhwm=64)
    with Subscriber(tcp_endpoint, rcvhwm=64) as sub:
        with Publisher(tcp_endpoint, options) as old:
            wait_for_subscription(old, sub, packet)
        new = Publisher(tcp_endpoint, options)
        cityscapes = SegResult(packet.result.labels, 0, True, 0, CITYSCAPES)
        received = []
        try:
            deadline = time.monotonic() + 5
            while not received or received[-1].classes is None:
                assert time.monotonic() < deadline, f"no class set within {len(received)} messages"
                new.publish(packet.frame, cityscapes)
                with contextlib.suppress(TimeoutError):
                    received.append(sub.recv(timeout=0.01))
        finally:
            new.close()
        stats = sub.stats
    assert all(m.classes in (None, CITYSCAPES) for m in received), [m.classes.name for m in received]
    # soon: joining k messages late, the class set comes within k more messages (not classes_every)
    assert received[-1].header.seq <= 2 * received[0].header.seq
    assert stats.restarts == 1 and stats.gaps == 0, [m.header.seq for m in received]
    assert len({m.header.session for m in received}) == 1 and received[0].header.session is not None


def test_a_sink_that_fails_to_start_frees_its_endpoint(tcp_endpoint: str) -> None:
    """The publisher is bound before the sink's own checks: when those failed, it stayed bound for
    as long as anything held the error's traceback (a caller logging it, a REPL)."""
    with pytest.raises(ConfigError, match="queue_size must be a positive whole number, got 0") as err:
        open_publisher_sink(f"zmq://{tcp_endpoint}", queue_size=0)
    Publisher(tcp_endpoint).close()  # was: SinkError, address already in use
    assert err.traceback  # still held here


def test_a_dropped_sink_frees_its_endpoint(tcp_endpoint: str) -> None:
    """A zmq:// sink dropped without close() kept its socket bound for ever: opening the same
    endpoint again was "Address already in use". Dropped while its thread publishes, it is closed
    there once what is queued has gone out: the endpoint is free a moment later."""
    rng = np.random.default_rng(3)
    sink = open_publisher_sink(f"zmq://{tcp_endpoint}", policy="block")
    for index in range(3):
        sink.write(make_packet(index, rng))
    del sink
    deadline = time.monotonic() + 5
    while True:
        try:
            Publisher(tcp_endpoint).close()
            break
        except ConfigError:  # was: address already in use, for ever
            assert time.monotonic() < deadline, "the dropped sink still holds its endpoint"
            time.sleep(0.02)


def test_sink_publishes_packets_from_its_thread(tcp_endpoint: str) -> None:
    rng = np.random.default_rng(2)
    uri = f"zmq://{tcp_endpoint}?parts=labels,overlay&quality=70&stream=sinktest&labels=raw"
    sink = open_publisher_sink(uri, queue_size=4, policy="block")
    try:
        assert sink.publisher.endpoint == tcp_endpoint
        with Subscriber(tcp_endpoint) as sub:
            deadline = time.monotonic() + 5
            while True:
                sink.write(make_packet(0, rng))
                try:
                    sub.recv(timeout=0.1)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline
            packet = make_packet(1, rng)
            sink.write(packet)
            message = sub.recv(timeout=5)
    finally:
        stats = sink.close()
    assert message.header.stream == "sinktest"
    assert [(p.name, p.encoding) for p in message.header.parts] == [("labels", "raw"), ("overlay", "jpeg")]
    np.testing.assert_array_equal(message.labels, packet.result.labels)
    assert stats.errors == 0 and stats.written >= 2


def test_publisher_without_subscribers_never_blocks(tcp_endpoint: str) -> None:
    rng = np.random.default_rng(3)
    packet = make_packet(0, rng)
    overlay = packet.overlay()
    with Publisher(tcp_endpoint, PublishOptions(parts=("labels", "overlay"))) as pub:
        t0 = time.perf_counter()
        for _ in range(200):
            pub.publish(packet.frame, packet.result, overlay)
        elapsed = time.perf_counter() - t0
        assert pub.stats.sent == 200
    assert elapsed < 5.0  # ~1 ms of encoding each; a blocking send would hang here


def test_publishing_from_two_threads_keeps_every_message_whole_and_numbered(tcp_endpoint: str) -> None:
    """Two threads publishing at once interleaved their frames on the PUB socket and reused seq
    numbers: the subscriber saw malformed messages, gaps and fake restarts."""
    rng = np.random.default_rng(5)
    packet = make_packet(0, rng, size=(8, 8))
    options = PublishOptions(parts=("labels",), sndhwm=100_000)
    with Publisher(tcp_endpoint, options) as pub, Subscriber(tcp_endpoint, rcvhwm=100_000) as sub:
        wait_for_subscription(pub, sub, packet)
        first = pub.stats.sent  # the seq of the next message
        errors: list[BaseException] = []

        def publish(n: int) -> None:
            try:
                for _ in range(n):
                    pub.publish(packet.frame, packet.result)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=publish, args=(1000,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seqs = []
        with contextlib.suppress(TimeoutError):
            while True:
                seqs.append(sub.recv(timeout=1).header.seq)
        stats = sub.stats
    assert errors == []
    assert pub.stats.sent == first + 2000
    assert seqs == list(range(first, first + 2000))
    assert (stats.malformed, stats.gaps, stats.restarts) == (0, 0, 0)


def test_close_delivers_the_messages_already_published(tmp_path: Path) -> None:
    """The PUB socket was closed with linger 0: the last large messages of a run, queued but not
    yet written, were lost (rtseg view --frames 12 got 11)."""
    image = np.zeros((720, 1280, 3), np.uint8)  # raw: 2.7 MB a message
    labels = np.zeros((36, 48), np.uint8)
    probe = make_packet(0, np.random.default_rng(0))
    for trial in range(3):  # without the linger about 5 in 6 trials lost a message
        endpoint = f"ipc://{tmp_path / f'last{trial}.sock'}"
        options = PublishOptions(parts=("frame",), frame_encoding="raw", sndhwm=8)
        pub = Publisher(endpoint, options)
        with Subscriber(endpoint, rcvhwm=8) as sub:
            wait_for_subscription(pub, sub, probe)
            got: list[int] = []

            def read(sub: Subscriber = sub, got: list[int] = got) -> None:
                with contextlib.suppress(TimeoutError):
                    while len(got) < 3:
                        got.append(sub.recv(timeout=2).header.frame_index)

            reader = threading.Thread(target=read)
            reader.start()
            for i in range(1, 4):
                pub.publish(Frame(image, i, time.time(), 0.0, "test"), SegResult(labels, i, True, 0, CAMVID))
            t0 = time.monotonic()
            pub.close()
            closing = time.monotonic() - t0
            reader.join()
        assert got == [1, 2, 3], f"trial {trial}: received {got}"
        assert closing < 2


def test_close_without_subscribers_is_immediate(tcp_endpoint: str) -> None:
    packet = make_packet(0, np.random.default_rng(5))
    pub = Publisher(tcp_endpoint, PublishOptions(parts=("labels",)))
    pub.publish(packet.frame, packet.result)  # no subscriber: nothing is queued, nothing lingers
    t0 = time.monotonic()
    pub.close()
    assert time.monotonic() - t0 < 0.5


def test_close_twice_and_publish_after_close(tcp_endpoint: str) -> None:
    packet = make_packet(0, np.random.default_rng(4))
    with Publisher(tcp_endpoint, PublishOptions(parts=("labels",))) as pub:
        pub.close()
    pub.close()
    # as Subscriber.recv and Client.segment say, not libzmq's "Socket operation on non-socket"
    with pytest.raises(ConfigError, match=rf"publisher on {tcp_endpoint} is closed"):
        pub.publish(packet.frame, packet.result)


def test_close_from_a_signal_handler_during_publish_ends_it(
    tcp_endpoint: str, monkeypatch, outcome_in_thread
) -> None:
    """A handler (SIGTERM, SIGALRM) that closes the publisher while this thread is inside
    publish(): close() waited for the lock publish() held, and the process hung."""
    from rtseg.stream import publisher as module

    packet = make_packet(0, np.random.default_rng(4))
    pub = Publisher(tcp_endpoint, PublishOptions(parts=("labels",)))
    encode = module.encode_frame_message

    def interrupted(header, payloads):  # as if a signal arrived here and its handler closed pub
        pub.close()
        return encode(header, payloads)

    monkeypatch.setattr(module, "encode_frame_message", interrupted)
    outcome = outcome_in_thread(
        lambda: pub.publish(packet.frame, packet.result), 10, "publish() and close() deadlocked"
    )
    assert len(outcome) == 1 and isinstance(outcome[0], ConfigError), outcome
    assert f"publisher on {tcp_endpoint} is closed" in str(outcome[0])


def test_busy_port_is_a_config_error_naming_it(tcp_endpoint: str) -> None:
    """A port in use is the endpoint's value failing, as a live IPC socket there is (ConfigError,
    from check_endpoint): it was a SinkError here and a ConfigError from Server."""
    with Publisher(tcp_endpoint), pytest.raises(ConfigError, match=r"cannot publish on tcp://127\.0\.0\.1"):
        open_publisher_sink(f"zmq://{tcp_endpoint}")


def test_uri_parsing() -> None:
    assert parse_zmq_uri("zmq://") == ("tcp://127.0.0.1:5555", {})
    endpoint, options = parse_zmq_uri("zmq://ipc:///tmp/seg.sock?parts=labels,frame&hwm=3&frame=png")
    assert endpoint == "ipc:///tmp/seg.sock"
    assert options == {"parts": ("labels", "frame"), "sndhwm": 3, "frame_encoding": "png"}
    for bad in (
        "tcp://127.0.0.1:5555",
        "zmq://127.0.0.1:5555",
        "zmq://udp://1.2.3.4:5",
        "zmq://tcp://h:1?color=red",
        "zmq://tcp://h:1?quality=high",
    ):
        with pytest.raises(ConfigError):
            parse_zmq_uri(bad)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("hwm=0", "option hwm must be"),
        # ZMQ_SNDHWM is a C int: setting it raised OverflowError as the sink opened
        ("hwm=3000000000", r"option hwm must be an integer in 1\.\.2\*\*31-1, got 3000000000"),
        ("labels=gif", "option labels must be 'png' or 'raw'"),
        ("quality=500", "option quality must be"),
        ("frame=bmp", "option frame must be"),
        # the last one was kept silently: the sink published labels only
        ("parts=labels&parts=overlay", r"option\(s\) \['parts'\] given more than once"),
        ("quality=50&hwm=3&quality=60", r"option\(s\) \['quality'\] given more than once"),
        # the shared rule: it left out that an id starts with a letter or digit
        (
            "stream=-bad",
            r"option stream must be 1\.\.64 characters of .* starting with a letter or digit, got '-bad'",
        ),
    ],
)
def test_uri_option_errors_name_the_key_the_user_wrote(query: str, message: str) -> None:
    """They named the dataclass field instead (PublishOptions.sndhwm for hwm=0)."""
    with pytest.raises(ConfigError, match=message) as caught:
        parse_zmq_uri(f"zmq://tcp://127.0.0.1:5555?{query}")
    assert "PublishOptions" not in str(caught.value)


def test_options_are_validated_and_not_given_twice(tcp_endpoint: str) -> None:
    with pytest.raises(ConfigError, match="parts"):
        PublishOptions(parts=("labels", "depth"))
    with pytest.raises(ConfigError, match="quality"):
        PublishOptions(quality=0)
    with pytest.raises(ConfigError, match="stream"):
        PublishOptions(stream="two words")
    with pytest.raises(ConfigError, match="both in the URI and as arguments"):
        open_publisher_sink(f"zmq://{tcp_endpoint}?quality=50", quality=60)
    with pytest.raises(ConfigError, match="unknown option"):
        open_publisher_sink(f"zmq://{tcp_endpoint}", colour="red")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # compared with a bound, a string raised a bare TypeError ('<=' not supported)
        ({"quality": "80"}, r"PublishOptions\.quality must be an integer in 1\.\.100, got '80' \(str\)"),
        ({"sndhwm": 2.0}, r"PublishOptions\.sndhwm must be an integer in 1\.\.2\*\*31-1, got 2\.0 \(float\)"),
        ({"classes_every": True}, r"classes_every must be an integer >= 1, got True \(bool\)"),
        ({"parts": 5}, r"PublishOptions\.parts must be distinct names from .*, got 5"),
    ],
)
def test_publish_options_of_the_wrong_type_are_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PublishOptions(**options)


def test_publish_refuses_what_it_cannot_send_by_name(tcp_endpoint: str) -> None:
    """A float32 overlay raised a bare ValueError from the encoder, a missing one too; a frame of
    the wrong type an AttributeError. None is an RtsegError naming the argument."""
    packet = make_packet(0, np.random.default_rng(0))
    overlay = packet.overlay()
    with Publisher(tcp_endpoint) as pub:
        with pytest.raises(ConfigError, match="part 'overlay': JPEG holds uint8, got float32"):
            pub.publish(packet.frame, packet.result, overlay.astype(np.float32))
        with pytest.raises(ConfigError, match=r"publish: overlay is None, but the publish options' parts"):
            pub.publish(packet.frame, packet.result)
        with pytest.raises(InputTypeError, match="part 'overlay' must be a NumPy array, got list"):
            pub.publish(packet.frame, packet.result, overlay.tolist())  # type: ignore[arg-type]
        with pytest.raises(InputTypeError, match="publish: frame must be a rtseg Frame, got ndarray"):
            pub.publish(packet.frame.image, packet.result, overlay)  # type: ignore[arg-type]
        with pytest.raises(InputTypeError, match="publish: result must be a rtseg SegResult, got ndarray"):
            pub.publish(packet.frame, packet.result.labels, overlay)  # type: ignore[arg-type]
        assert pub.stats.sent == 0
        pub.publish(packet.frame, packet.result, overlay)
        assert pub.stats.sent == 1


def test_curve_keys_of_the_wrong_type_are_refused_by_name(tcp_endpoint: str) -> None:
    with pytest.raises(ConfigError, match="curve_keys must be None or a key folder path, got 5"):
        Publisher(tcp_endpoint, curve_keys=5)  # type: ignore[arg-type]
    Publisher(tcp_endpoint).close()  # the failed one left the port free


def test_a_numpy_timestamp_is_published_as_a_json_number(ipc_endpoint: str) -> None:
    """Frame takes a NumPy float32 timestamp; publish() put it into the header as is and failed in
    the JSON encoder with a builtin TypeError."""
    rng = np.random.default_rng(1)
    packet = make_packet(0, rng)
    stamped = Frame(packet.frame.image, 0, np.float32(1234.5), packet.frame.monotonic, "test")
    with Publisher(ipc_endpoint) as pub, Subscriber(ipc_endpoint) as sub:
        wait_for_subscription(pub, sub, packet)
        pub.publish(stamped, packet.result, packet.overlay())
        assert sub.recv(timeout=5).header.capture_ts == 1234.5
