"""IPv6 endpoints (tcp://[::1]:PORT) work for every socket rtseg opens: libzmq sockets are IPv4-only
unless ZMQ_IPV6 is set, so a bind failed ("No such device") and a connect failed silently."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from rtseg.data.labels import CAMVID
from rtseg.engine import Engine
from rtseg.errors import StreamTimeout
from rtseg.result import SegResult
from rtseg.source.frame import Frame
from rtseg.stream import Client, Publisher, PublishOptions, Server, Subscriber, open_publisher_sink
from rtseg.stream.protocol import use_ipv6

IMAGE = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _free_ipv6_port() -> int | None:
    """A free port on ::1, or None when this machine has no IPv6 loopback."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            return s.getsockname()[1]
    except OSError:
        return None


@pytest.fixture
def ipv6_endpoint() -> str:
    port = _free_ipv6_port()
    if port is None:
        pytest.skip("this machine has no IPv6 loopback (cannot bind a socket to ::1)")
    return f"tcp://[::1]:{port}"


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _frame_message(seq: int) -> list[bytes]:
    header = {
        "proto": "rtseg/1",
        "type": "frame",
        "stream": "cam",
        "seq": seq,
        "frame_index": seq,
        "capture_ts": time.time(),
        "publish_ts": time.time(),
        "is_keyframe": True,
        "deep_age": 0,
        "image_shape": [4, 4, 3],
        "parts": [{"name": "labels", "encoding": "raw", "dtype": "uint8", "shape": [4, 4]}],
    }
    return [b"cam", json.dumps(header).encode(), bytes(16)]


def test_server_and_client_over_ipv6(small_engine: Engine, ipv6_endpoint: str) -> None:
    with (
        Server(small_engine, bind=ipv6_endpoint).start() as server,
        Client(ipv6_endpoint, timeout=10) as client,
    ):
        reply = client.segment(IMAGE, labels="raw")
        assert server.endpoint.startswith("tcp://[::1]:")
    np.testing.assert_array_equal(reply.labels, small_engine.run(IMAGE)[0])


def test_client_reaches_a_plain_ipv6_peer(ipv6_endpoint: str, ctx: zmq.Context) -> None:
    """The client alone: its request must arrive at a pyzmq ROUTER bound with ipv6=1."""
    router = ctx.socket(zmq.ROUTER)
    router.ipv6 = 1
    router.bind(ipv6_endpoint)
    with Client(ipv6_endpoint, timeout=0.5, retries=0) as client, pytest.raises(StreamTimeout):
        client.segment(IMAGE)  # the router never answers
    assert router.poll(1000), "the client's request never reached the IPv6 peer"


def test_subscriber_receives_a_plain_ipv6_publisher(ipv6_endpoint: str, ctx: zmq.Context) -> None:
    pub = ctx.socket(zmq.PUB)
    pub.ipv6 = 1
    pub.bind(ipv6_endpoint)
    with Subscriber(ipv6_endpoint) as sub:
        deadline = time.monotonic() + 5
        seq = 0
        while True:  # PUB/SUB connects asynchronously: publish until one gets through
            pub.send_multipart(_frame_message(seq))
            seq += 1
            try:
                message = sub.recv(timeout=0.1)
                break
            except StreamTimeout:
                assert time.monotonic() < deadline, "the subscriber never connected over IPv6"
    assert message.topic == "cam" and message.labels.shape == (4, 4)


def test_publisher_and_sink_publish_over_ipv6(ipv6_endpoint: str, ctx: zmq.Context) -> None:
    """The publisher alone: a pyzmq SUB connected with ipv6=1 must receive what it sends."""
    sub = ctx.socket(zmq.SUB)
    sub.ipv6 = 1
    sub.subscribe(b"")
    labels = np.zeros((4, 4), np.uint8)
    frame = Frame(np.zeros((4, 4, 3), np.uint8), 0, time.time(), time.perf_counter(), "test")
    with Publisher(ipv6_endpoint, PublishOptions(parts=("labels",))) as pub:
        assert pub.endpoint == ipv6_endpoint
        sub.connect(ipv6_endpoint)
        deadline = time.monotonic() + 5
        while not sub.poll(100):
            assert time.monotonic() < deadline, "nothing published over IPv6 arrived"
            pub.publish(frame, SegResult(labels, 0, True, 0, CAMVID, {}))
    assert sub.recv_multipart()[0] == b"rtseg"
    port = _free_ipv6_port()
    sink = open_publisher_sink(f"zmq://tcp://[::1]:{port}?parts=labels")  # was: SinkError
    try:
        assert sink.publisher.endpoint == f"tcp://[::1]:{port}"
    finally:
        sink.close()


def test_ipv4_endpoints_are_still_reported_as_ipv4(small_engine: Engine, tcp_endpoint: str) -> None:
    """With ZMQ_IPV6 libzmq reports a bind to 127.0.0.1 as tcp://[::ffff:127.0.0.1]:PORT."""
    with Publisher(tcp_endpoint) as pub:
        assert pub.endpoint == tcp_endpoint
    with Server(small_engine, bind=tcp_endpoint) as server:
        assert server.endpoint == tcp_endpoint


@pytest.mark.parametrize(
    ("endpoint", "ipv6"),
    [
        ("tcp://[::1]:5555", 1),
        ("tcp://[::]:5555", 1),
        ("tcp://127.0.0.1:5555", 0),
        ("tcp://*:5555", 0),
        # a name keeps IPv4: with ZMQ_IPV6 "localhost" may resolve to ::1 and miss a 127.0.0.1 server
        ("tcp://localhost:5555", 0),
        ("ipc:///tmp/rtseg.sock", 0),
    ],
)
def test_ipv6_is_set_only_for_a_bracketed_ipv6_host(ctx, endpoint: str, ipv6: int) -> None:
    sock = ctx.socket(zmq.PUB)
    try:
        use_ipv6(sock, endpoint)
        assert sock.getsockopt(zmq.IPV6) == ipv6
    finally:
        sock.close(linger=0)
