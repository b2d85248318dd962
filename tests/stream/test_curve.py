"""CurveZMQ: keys on disk, an encrypted server and publisher, and clients without the right keys shut out."""

from __future__ import annotations

import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from rtseg.data.labels import CAMVID
from rtseg.engine import Engine
from rtseg.errors import ConfigError
from rtseg.result import SegResult
from rtseg.source.frame import Frame
from rtseg.stream import Client, Publisher, PublishOptions, Server, StreamTimeout, Subscriber, generate_keys

IMAGE = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    generate_keys(tmp_path / "keys")
    return tmp_path / "keys"


def test_generate_keys_layout(keys: Path) -> None:
    names = sorted(p.relative_to(keys).as_posix() for p in keys.rglob("*") if p.is_file())
    assert names == [
        "client.key",
        "client.key_secret",
        "clients/client.key",
        "server.key",
        "server.key_secret",
    ]
    for secret in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE((keys / secret).stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="already exist"):
        generate_keys(keys)
    before = (keys / "server.key").read_bytes()
    generate_keys(keys, force=True)
    assert (keys / "server.key").read_bytes() != before


def test_encrypted_server_admits_only_known_clients(
    small_engine: Engine, tcp_endpoint: str, keys: Path, tmp_path: Path
) -> None:
    stranger = generate_keys(tmp_path / "stranger").directory
    shutil.copyfile(keys / "server.key", stranger / "server.key")  # knows the server, is not admitted
    with Server(small_engine, bind=tcp_endpoint, curve_keys=keys).start() as server:
        with Client(tcp_endpoint, timeout=10, curve_keys=keys) as client:
            reply = client.segment(IMAGE, labels="raw")
        for directory in (None, stranger):
            intruder = Client(tcp_endpoint, timeout=0.5, retries=0, curve_keys=directory)
            with intruder, pytest.raises(StreamTimeout) as refused:
                intruder.segment(IMAGE)
            # a client with keys is told the server may have refused them, one without that it may
            # need keys: not only that it is down
            assert ("refused this client's CURVE keys" in str(refused.value)) == (directory is not None)
            assert ("requires CurveZMQ keys" in str(refused.value)) == (directory is None)
        assert server.stats.received == 1
    np.testing.assert_array_equal(reply.labels, small_engine.run(IMAGE)[0])


def test_encrypted_publisher(tcp_endpoint: str, keys: Path) -> None:
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4) % 11
    frame = Frame(np.zeros((6, 8, 3), np.uint8), 0, time.time(), time.perf_counter(), "test")
    result = SegResult(labels, 0, True, 0, CAMVID)
    options = PublishOptions(parts=("labels",))
    with (
        Publisher(tcp_endpoint, options, curve_keys=keys) as pub,
        Subscriber(tcp_endpoint, curve_keys=keys) as sub,
        Subscriber(tcp_endpoint) as plain,
    ):
        deadline = time.monotonic() + 5
        while True:
            pub.publish(frame, result)
            try:
                message = sub.recv(timeout=0.1)
                break
            except StreamTimeout:
                assert time.monotonic() < deadline, "the encrypted subscriber never connected"
        with pytest.raises(StreamTimeout, match=r"or the publisher requires CurveZMQ keys"):
            plain.recv(timeout=0.3)
    np.testing.assert_array_equal(message.labels, labels)


def test_missing_keys_are_named(tmp_path: Path, tcp_endpoint: str, small_engine: Engine) -> None:
    with pytest.raises(ConfigError, match=r"server\.key_secret"):
        Server(small_engine, bind=tcp_endpoint, curve_keys=tmp_path)
    with (
        Client(tcp_endpoint, curve_keys=tmp_path) as client,
        pytest.raises(ConfigError, match=r"client\.key_secret"),
    ):
        client.segment(IMAGE)


def test_one_bad_file_among_the_client_keys_is_named_before_serving(keys: Path) -> None:
    # ZeroMQ's authenticator logged the error and loaded no key at all: every client was refused
    # by a server that said it was running secured.
    from rtseg.stream.curve import check_server_keys

    (keys / "clients" / "laptop.key").write_text("not a cert\n")
    with pytest.raises(ConfigError, match=r"clients/laptop\.key is not a ZeroMQ certificate"):
        check_server_keys(keys)


def test_a_key_of_the_wrong_length_is_named_not_an_invalid_argument(
    keys: Path, tcp_endpoint: str, small_engine: Engine
) -> None:
    # "Invalid argument" at bind (after the model loaded) or a ZMQError traceback from the client.
    good = (keys / "server.key").read_text()
    public = good.split('public-key = "')[1].split('"')[0]
    (keys / "server.key").write_text(good.replace(public, "short"))
    with (
        Client(tcp_endpoint, curve_keys=keys) as client,
        pytest.raises(
            ConfigError,
            match=r"server\.key: its public key is not a CurveZMQ key \(40 Z85 characters, got 5\)",
        ),
    ):
        client.segment(IMAGE)
    secret = keys / "server.key_secret"
    text = secret.read_text()
    key = text.split('secret-key = "')[1].split('"')[0]
    secret.write_text(text.replace(key, key[:10]))
    with pytest.raises(ConfigError, match=r"server\.key_secret: its secret key is not a CurveZMQ key"):
        Server(small_engine, bind=tcp_endpoint, curve_keys=keys)


def test_a_zmq_sink_uri_can_ask_for_encryption(tcp_endpoint: str, keys: Path) -> None:
    # `rtseg run ... zmq://...` had no way to encrypt: "unknown option 'curve_keys'".
    from rtseg.sink import open_sink

    sink = open_sink(f"zmq://{tcp_endpoint}?curve_keys={keys}&parts=labels")
    try:
        assert sink.publisher._curve is not None
    finally:
        sink.close()
    with pytest.raises(ConfigError, match=r"server\.key_secret"):
        open_sink(f"zmq://{tcp_endpoint}?curve_keys={keys / 'nowhere'}")
