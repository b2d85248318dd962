"""ZeroMQ endpoints are checked before libzmq sees them (it wraps ports above 65535 silently)."""

from __future__ import annotations

import pytest

from rtseg.errors import ConfigError
from rtseg.stream import Publisher, Server, Subscriber
from rtseg.stream.endpoint import check_endpoint
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
