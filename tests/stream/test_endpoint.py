"""ZeroMQ endpoints are checked before libzmq sees them (it wraps ports above 65535 silently)."""

from __future__ import annotations

import pytest
import zmq

from rtseg.errors import ConfigError, InputTypeError
from rtseg.stream import Client, Publisher, Server, Subscriber
from rtseg.stream.endpoint import DEFAULT_PUB_ENDPOINT, DEFAULT_SERVER_ENDPOINT, check_endpoint, open_socket
from rtseg.stream.publisher import parse_zmq_uri


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://127.0.0.1:5555",
        "tcp://*:5555",
        "tcp://[::1]:5555",
        "tcp://eth0:1",
        "ipc:///tmp/seg",
        "inproc://x",
    ],
)
def test_good_endpoints_pass_unchanged(endpoint: str) -> None:
    assert check_endpoint(endpoint, bind=False) == endpoint


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("tcp://127.0.0.1:99999", "port must be in 1..65535, got '99999'"),
        ("tcp://127.0.0.1:0", "port must be in 1..65535, got '0'"),
        ("tcp://127.0.0.1:http", "port must be in 1..65535"),
        ("tcp://127.0.0.1", "needs HOST:PORT"),
        ("tcp://:5555", "needs HOST:PORT"),
        ("tcp://::1:5555", "IPv6 host in brackets"),
        ("udp://127.0.0.1:5555", "transport tcp, ipc, inproc"),
        ("127.0.0.1:5555", "TRANSPORT://ADDRESS"),
        ("ipc://", "address after ipc:// is empty"),
    ],
)
def test_bad_endpoints_name_what_is_wrong(endpoint: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")) as info:
        check_endpoint(endpoint, bind=True)
    assert repr(endpoint) in str(info.value)


def test_a_wildcard_port_binds_but_does_not_connect() -> None:
    assert check_endpoint("tcp://127.0.0.1:*", bind=True) == "tcp://127.0.0.1:*"
    with pytest.raises(ConfigError, match="connecting needs a port number"):
        check_endpoint("tcp://127.0.0.1:*", bind=False)


def test_sink_uri_publisher_and_subscriber_refuse_an_out_of_range_port() -> None:
    with pytest.raises(ConfigError, match="99999"):
        parse_zmq_uri("zmq://tcp://127.0.0.1:99999")
    with pytest.raises(ConfigError, match="99999"):
        Publisher("tcp://127.0.0.1:99999")
    with pytest.raises(ConfigError, match="99999"):
        Subscriber("tcp://127.0.0.1:99999")


def test_binding_ipc_over_a_file_that_is_no_socket_is_refused(tmp_path) -> None:
    """libzmq unlinks the path before binding: zmq://ipc://in.mp4 replaced the input by a socket."""
    video = tmp_path / "in.mp4"
    video.write_bytes(b"precious")
    endpoint = f"ipc://{video}"
    with pytest.raises(ConfigError, match="is a file, not a socket, and binding would delete it"):
        check_endpoint(endpoint, bind=True)
    with pytest.raises(ConfigError, match="not a socket"):
        parse_zmq_uri(f"zmq://{endpoint}")
    with pytest.raises(ConfigError, match="not a socket"):
        Publisher(endpoint)
    assert video.read_bytes() == b"precious"
    assert check_endpoint(endpoint, bind=False) == endpoint  # connecting deletes nothing


def test_binding_ipc_on_a_new_path_or_an_old_socket_is_allowed(tmp_path) -> None:
    import socket

    fresh = f"ipc://{tmp_path / 'new.sock'}"
    assert check_endpoint(fresh, bind=True) == fresh
    old = tmp_path / "old.sock"
    with socket.socket(socket.AF_UNIX) as s:  # what a publisher killed before it unbound leaves
        s.bind(str(old))
    assert check_endpoint(f"ipc://{old}", bind=True) == f"ipc://{old}"
    with Publisher(f"ipc://{old}") as pub:
        assert pub.endpoint == f"ipc://{old}"


def test_binding_ipc_where_a_live_process_listens_is_refused(tmp_path, small_engine) -> None:
    """libzmq unlinked the live socket and bound a new one: the first publisher (or server) kept
    running but never saw another client, silently."""
    import socket

    endpoint = f"ipc://{tmp_path / 'live.sock'}"
    message = rf"{endpoint} is in use by another process \(a live server/publisher is bound there\)"
    with Publisher(endpoint) as first:
        with pytest.raises(ConfigError, match=message):
            Publisher(endpoint)
        with pytest.raises(ConfigError, match=message):
            Server(small_engine, bind=endpoint)
        with pytest.raises(ConfigError, match=message):
            parse_zmq_uri(f"zmq://{endpoint}")
        assert check_endpoint(endpoint, bind=False) == endpoint  # connecting to it is what it is for
        assert first.endpoint == endpoint
    other = tmp_path / "other.sock"
    with socket.socket(socket.AF_UNIX) as listener:  # any process listening there, not only rtseg
        listener.bind(str(other))
        listener.listen(1)
        with pytest.raises(ConfigError, match="is in use by another process"):
            check_endpoint(f"ipc://{other}", bind=True)
    assert check_endpoint(f"ipc://{other}", bind=True) == f"ipc://{other}"  # stale once it closed


def _four(small_engine, endpoint: str, *, server_endpoint: str | None = None) -> list:
    """Publisher, Server, Subscriber and Client, each given ``endpoint`` its own way."""
    return [
        lambda: Publisher(endpoint),
        lambda: Server(small_engine, bind=server_endpoint or endpoint),
        lambda: Subscriber(endpoint),
        lambda: Client(endpoint),
    ]


def test_the_four_take_an_endpoint_with_or_without_zmq_prefix(small_engine, free_port) -> None:
    """Subscriber and Client dropped a zmq:// prefix, Publisher and Server refused it."""
    pub_port, server_port = free_port(), free_port()
    with Publisher(f"zmq://tcp://127.0.0.1:{pub_port}") as pub:
        assert pub.endpoint == f"tcp://127.0.0.1:{pub_port}"
    with Server(small_engine, bind=f"zmq://tcp://127.0.0.1:{server_port}") as server:
        assert server.endpoint == f"tcp://127.0.0.1:{server_port}"
    with (
        Subscriber(f"zmq://tcp://127.0.0.1:{pub_port}") as sub,
        Subscriber(f"tcp://127.0.0.1:{pub_port}") as plain,
    ):
        assert sub.endpoint == plain.endpoint == f"tcp://127.0.0.1:{pub_port}"
    with Client(f"zmq://tcp://127.0.0.1:{server_port}") as client:
        assert client.endpoint == f"tcp://127.0.0.1:{server_port}"


def test_subscriber_and_client_name_their_endpoint_as_publisher_does() -> None:
    """Their parameter was ``addr`` (and their attribute ``.addr``); Publisher's is ``endpoint``."""
    with (
        Subscriber(endpoint="tcp://127.0.0.1:5999") as sub,
        Client(endpoint="tcp://127.0.0.1:5998") as client,
    ):
        assert sub.endpoint == "tcp://127.0.0.1:5999" and client.endpoint == "tcp://127.0.0.1:5998"
    # the defaults of each pair find each other
    with Subscriber() as sub, Client() as client:
        assert sub.endpoint == DEFAULT_PUB_ENDPOINT and client.endpoint == DEFAULT_SERVER_ENDPOINT


def test_the_four_refuse_an_endpoint_that_is_no_string_or_has_options(small_engine, tcp_endpoint) -> None:
    """Subscriber(5) raised AttributeError ('int' object has no attribute 'startswith'); a query was
    refused by name by the subscriber only (the client and an ipc:// publisher took it as a path)."""
    for make in _four(small_engine, 5):  # type: ignore[arg-type]
        with pytest.raises(
            InputTypeError, match=r"must be a string such as tcp://127\.0\.0\.1:55(55|60) .*got 5 \(int\)"
        ):
            make()
    for make in _four(small_engine, f"zmq://{tcp_endpoint}?parts=labels"):
        with pytest.raises(ConfigError, match=r"has options \(\?parts=labels\); a \w+ takes none"):
            make()


def test_a_busy_port_is_the_same_config_error_for_publisher_and_server(small_engine, tcp_endpoint) -> None:
    """Publisher raised SinkError, Server ConfigError, for the same port in use."""
    with Publisher(tcp_endpoint):
        with pytest.raises(ConfigError, match=rf"cannot publish on {tcp_endpoint}: Address already in use"):
            Publisher(tcp_endpoint)
        with pytest.raises(ConfigError, match=rf"cannot serve on {tcp_endpoint}: Address already in use"):
            Server(small_engine, bind=tcp_endpoint)


def test_open_socket_leaves_nothing_open_when_it_fails(tcp_endpoint) -> None:
    taken = zmq.Context()
    holder = taken.socket(zmq.PUB)
    holder.bind(tcp_endpoint)
    try:
        ctx = zmq.Context()
        with pytest.raises(ConfigError, match=rf"cannot bind to {tcp_endpoint}"):
            open_socket(ctx, zmq.PUB, tcp_endpoint, bind=True, doing="bind to", term_on_failure=True)
        assert ctx.closed  # the socket was closed first, or term() would have waited for it
        kept = zmq.Context()
        with pytest.raises(ConfigError):
            open_socket(kept, zmq.PUB, tcp_endpoint, bind=True, doing="bind to")
        assert not kept.closed  # a shared context (the client's) stays usable
        kept.term()
    finally:
        holder.close(linger=0)
        taken.term()


def test_inproc_is_refused_where_no_peer_could_share_the_context() -> None:
    """Each rtseg endpoint class makes its own zmq.Context, and inproc connects only within one:
    a Publisher and Subscriber on inproc:// were accepted and the subscriber waited out its timeout."""
    from rtseg.stream import Subscriber

    with pytest.raises(ConfigError, match="inproc:// connects only the sockets of one ZeroMQ context"):
        Subscriber("inproc://camera")
