"""The lazy-pirate client: bounded waits when the server is down or restarts, and recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq

from rtseg.data.labels import CAMVID
from rtseg.engine import Engine
from rtseg.errors import ConfigError, InputTypeError, ProtocolError
from rtseg.models import get_model, save_checkpoint
from rtseg.stream import Client, Server, ServerError, StreamTimeout
from rtseg.stream.protocol import ErrorCode, error_reply

REPO = Path(__file__).resolve().parents[2]
IMAGE = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_server_down_times_out_within_the_configured_time(tcp_endpoint: str) -> None:
    with Client(tcp_endpoint, timeout=0.3, retries=2) as client:
        t0 = time.monotonic()
        with pytest.raises(StreamTimeout, match="after 3 attempt"):
            client.segment(IMAGE)
        elapsed = time.monotonic() - t0
        assert client.reconnects == 3
    assert 0.85 <= elapsed < 0.9 + 0.5, elapsed


def test_server_restart_mid_run(small_engine: Engine, tcp_endpoint: str) -> None:
    with Client(tcp_endpoint, timeout=0.5, retries=1) as client:
        server = Server(small_engine, bind=tcp_endpoint).start()
        try:
            first = [client.segment(IMAGE, stream_id="cam") for _ in range(3)]
        finally:
            server.close()
        t0 = time.monotonic()
        with pytest.raises(StreamTimeout):
            client.segment(IMAGE, stream_id="cam")
        assert time.monotonic() - t0 < 1.0 + 0.5
        with Server(small_engine, bind=tcp_endpoint).start() as restarted:
            again = client.segment(IMAGE, stream_id="cam")
            later = client.segment(IMAGE, stream_id="cam")
            assert restarted.stats.errors == {"unknown_stream": 1}
    assert [r.deep_age for r in first] == [0, 1, 2]
    # the new server never saw this stream: the client started it again, with a keyframe
    assert again.stream_restarted and again.is_keyframe and again.attempts == 1
    assert not later.stream_restarted and later.deep_age == 1
    np.testing.assert_array_equal(again.labels, first[0].labels)


def test_a_killed_server_process_is_survived(
    tmp_path: Path, free_port: Callable[[], int], serve_process_args
) -> None:  # type: ignore[no-untyped-def]
    """kill -9 `rtseg serve`: the call in flight times out in time; a new process serves again."""
    weights = tmp_path / "espnet_random.pt"
    net = get_model("espnet")
    save_checkpoint(weights, net.state_dict(), net.meta)
    port = free_port()
    cmd, env = serve_process_args(weights, f"tcp://127.0.0.1:{port}")

    def serve() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert proc.stdout is not None and "rtseg serve:" in proc.stdout.readline()
        return proc

    proc = serve()
    with Client(f"tcp://127.0.0.1:{port}", timeout=0.4, retries=1) as client:
        try:
            assert client.segment(IMAGE).labels.shape == (48, 64)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            t0 = time.monotonic()
            with pytest.raises(StreamTimeout):
                client.segment(IMAGE)
            assert time.monotonic() - t0 < 0.8 + 0.5
            proc = serve()
            assert client.segment(IMAGE).labels.shape == (48, 64)
        finally:
            proc.kill()
            proc.wait(10)


def test_ipc_transport(small_engine: Engine, ipc_endpoint: str) -> None:
    with Server(small_engine, bind=ipc_endpoint).start(), Client(ipc_endpoint, timeout=10) as client:
        reply = client.segment(IMAGE, labels="raw")
    np.testing.assert_array_equal(reply.labels, small_engine.run(IMAGE)[0])


def test_a_request_interrupted_by_an_exception_leaves_the_client_usable(
    small_engine: Engine, tcp_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or a signal handler's exception) while waiting left the REQ socket waiting for a
    reply: the next send failed with EFSM, reported as 'no reply after 1 attempt(s)' at once."""
    poll = zmq.Socket.poll
    interrupted: list[bool] = []

    def interrupt_once(self: zmq.Socket, *args: object, **kwargs: object) -> int:
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return poll(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(zmq.Socket, "poll", interrupt_once)
    with (
        Server(small_engine, bind=tcp_endpoint).start(),
        Client(tcp_endpoint, timeout=10, retries=0) as client,
    ):
        with pytest.raises(KeyboardInterrupt):
            client.segment(IMAGE)
        reply = client.segment(IMAGE, labels="raw")
    np.testing.assert_array_equal(reply.labels, small_engine.run(IMAGE)[0])


def test_errors_are_typed(small_engine: Engine, tcp_endpoint: str) -> None:
    with Server(small_engine, bind=tcp_endpoint).start(), Client(tcp_endpoint, timeout=10) as client:
        with pytest.raises(ServerError) as err:
            client.segment(IMAGE.astype(np.uint16))
        assert err.value.code == "bad_dtype"
        with pytest.raises(ConfigError):
            client.segment(b"\xff\xd8", encoding="raw")
        with pytest.raises(ConfigError):
            Client("127.0.0.1:5560")
        with pytest.raises(ConfigError):
            Client(tcp_endpoint, timeout=0)


def test_an_endless_timeout_is_refused(tcp_endpoint: str) -> None:
    # waiting forever is the hang the client exists to avoid (and int(inf * 1000) would crash later)
    with pytest.raises(ConfigError, match="finite"):
        Client(tcp_endpoint, timeout=float("inf"))
    with pytest.raises(ConfigError, match="finite"):
        Client(tcp_endpoint, timeout=float("nan"))


def test_requests_carry_the_client_timeout_as_their_deadline(
    small_engine: Engine, tcp_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[dict] = []
    original = Client.request

    def spy(self: Client, frames: list, **kwargs: object) -> list:
        sent.append(json.loads(frames[0]))
        return original(self, frames, **kwargs)

    monkeypatch.setattr(Client, "request", spy)
    with Server(small_engine, bind=tcp_endpoint).start(), Client(tcp_endpoint, timeout=2.5) as client:
        client.segment(IMAGE)
    assert sent[0]["deadline_ms"] == 2500


def _ok_reply(req_id: int) -> dict:
    return {
        "proto": "rtseg/1",
        "type": "segment_reply",
        "id": req_id,
        "status": "ok",
        "is_keyframe": True,
        "deep_age": 0,
        "timings_ms": {"total": 1.0},
        "image_shape": [2, 4, 3],
        "input_size": [4, 2],
        "parts": [{"name": "labels", "encoding": "raw", "dtype": "uint8", "shape": [2, 4]}],
        "classes": CAMVID.to_dict(),
    }


def _one_reply_raises(endpoint: str, reply: Callable[[str], list[bytes]], message: str) -> None:
    """A fake server answers one request with ``reply(request_id)``; the client must raise a
    ProtocolError matching ``message``."""
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    rep.bind(endpoint)

    def answer() -> None:
        if rep.poll(5000):
            rep.send_multipart(reply(json.loads(rep.recv_multipart()[0])["id"]))

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        with Client(endpoint, timeout=5, retries=0) as client, pytest.raises(ProtocolError, match=message):
            client.segment(np.zeros((2, 4, 3), np.uint8))
    finally:
        thread.join(5)
        rep.close(linger=0)
        ctx.term()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("deep_age", '"zero"'),
        # bool() and int() took these: "false" was a keyframe, -1 and 2.5 deep ages
        ("is_keyframe", '"false"'),
        ("deep_age", "-1"),
        ("deep_age", "2.5"),
        ("frame_index", "-3"),
        ("image_shape", "5"),
        ("timings_ms", "[1, 2]"),
        ("input_size", "[1e400, 2]"),  # Python's json reads 1e400 as inf; int() of it overflows
        ("classes", '{"name": "x", "names": ["a"], "palette": [[1e400, 0, 0]]}'),
    ],
)
def test_a_bad_field_in_a_reply_is_a_protocol_error(field: str, value: str, tcp_endpoint: str) -> None:
    """A foreign or buggy server must not crash a robot's loop with an untyped ValueError."""

    def reply(req_id: str) -> list[bytes]:
        header = json.dumps({**_ok_reply(req_id), field: "@"}).replace('"@"', value)
        return [header.encode(), b"\1" * 8]

    _one_reply_raises(tcp_endpoint, reply, field)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_reply_with_nan_or_infinity_is_not_json(constant: str, tcp_endpoint: str) -> None:
    """Python's json read them (the wire format's JSON is strict), so a reply's NaN timing passed."""

    def reply(req_id: str) -> list[bytes]:
        header = json.dumps({**_ok_reply(req_id), "timings_ms": {"total": "@"}}).replace('"@"', constant)
        return [header.encode(), b"\1" * 8]

    _one_reply_raises(tcp_endpoint, reply, f"bad_json: .*{constant} is not a JSON value")


def test_a_reply_with_two_parts_of_one_name_is_a_protocol_error(tcp_endpoint: str) -> None:
    """Part names are unique in a message (the subscriber refused duplicates); the client took the
    last 'labels' of two without a word."""

    def reply(req_id: str) -> list[bytes]:
        header = _ok_reply(req_id)
        header["parts"] = header["parts"] * 2
        return [json.dumps(header).encode(), b"\1" * 8, b"\2" * 8]

    _one_reply_raises(tcp_endpoint, reply, r"expected unique part names, got \['labels', 'labels'\]")


def test_a_restarted_stream_keeps_the_call_deadline(tcp_endpoint: str) -> None:
    """The server answers ``unknown_stream`` only on the last retry, then goes silent: the restart
    request gets what is left of the call's ``timeout * (retries + 1)``, not a fresh set of retries
    (which made one call take about twice the documented bound)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(tcp_endpoint)
    seen: list[dict] = []
    stop = threading.Event()

    def serve() -> None:
        # silent for the first two attempts, unknown_stream on the third, silent after that
        while not stop.is_set():
            if not router.poll(50):
                continue
            identity, empty, header, *_ = router.recv_multipart()
            request = json.loads(header)
            seen.append(request)
            if len(seen) == 3:
                reply = error_reply(request["id"], ErrorCode.UNKNOWN_STREAM, "no such stream")
                router.send_multipart([identity, empty, *reply])

    thread = threading.Thread(target=serve)
    thread.start()
    timeout, retries = 0.3, 2
    bound = timeout * (retries + 1)
    try:
        with Client(tcp_endpoint, timeout=timeout, retries=retries) as client:
            client._started.add("cam")  # a stream this client started before the server lost it
            t0 = time.monotonic()
            with pytest.raises(StreamTimeout):
                client.segment(IMAGE, stream_id="cam")
            elapsed = time.monotonic() - t0
    finally:
        stop.set()
        thread.join(5)
        router.close(linger=0)
        ctx.term()
    assert len(seen) >= 4 and "start" not in seen[2] and seen[3].get("start"), seen  # it did restart
    assert bound - 0.05 <= elapsed < bound + 0.25, elapsed
    # the restart request tells the server what is left of the call's time, not a fresh timeout
    assert seen[3]["deadline_ms"] < timeout * 1000, seen[3]


def _labels(dtype: str, shape: list[int]) -> dict:
    return {"name": "labels", "encoding": "raw", "dtype": dtype, "shape": shape}


@pytest.mark.parametrize(
    ("parts", "payloads", "message"),
    [
        (
            [_labels("uint16", [2, 2])],
            [b"\0" * 8],
            r"part 'labels': expected a h x w uint8 array, got shape \[2, 2\] uint16",
        ),
        (
            [_labels("float32", [2, 1])],
            [b"\0" * 8],
            r"part 'labels': expected a h x w uint8 array, got shape \[2, 1\] float32",
        ),
        (
            [_labels("uint8", [2, 2, 2])],
            [b"\0" * 8],
            r"part 'labels': expected a h x w uint8 array, got shape \[2, 2, 2\] uint8",
        ),
        (
            [_labels("uint8", [2, 4])],
            [bytes([0, 1, 2, 3, 4, 5, 6, len(CAMVID)])],
            rf"part 'labels': expected class ids in 0..{len(CAMVID) - 1} .* got values up to {len(CAMVID)}",
        ),
        (
            [_labels("uint8", [2, 4])],
            [bytes([255] * 8)],  # the ignore label is never predicted
            r"part 'labels': expected class ids .* got values up to 255",
        ),
        (
            [_labels("uint8", [2, 4]), {**_labels("uint8", [2, 4]), "name": "overlay"}],
            [b"\1" * 8, b"\1" * 8],
            r"part 'overlay': expected a h x w x 3 uint8 array, got shape \[2, 4\] uint8",
        ),
    ],
)
def test_a_reply_label_map_that_breaks_the_spec_is_refused(
    parts: list[dict], payloads: list[bytes], message: str, tcp_endpoint: str
) -> None:
    """What the subscriber refuses in a published message, the client refuses in a reply: a
    foreign server's uint16, float or 3-D labels, or class ids past its own class set."""

    def reply(req_id: str) -> list[bytes]:
        return [json.dumps({**_ok_reply(req_id), "parts": parts}).encode(), *payloads]

    _one_reply_raises(tcp_endpoint, reply, message)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": "1"}, "timeout must be a finite number of seconds > 0, got '1'"),
        ({"timeout": True}, "timeout must be a finite number of seconds > 0, got True"),
        ({"timeout": None}, "timeout must be a finite number of seconds > 0, got None"),
        ({"retries": "2"}, "retries must be an integer >= 0, got '2'"),
        ({"retries": 1.5}, "retries must be an integer >= 0, got 1.5"),
        ({"retries": -1}, "retries must be an integer >= 0, got -1"),
        ({"max_pixels": 0}, "max_pixels must be an integer >= 1, got 0"),
        ({"max_pixels": "big"}, "max_pixels must be an integer >= 1, got 'big'"),
        ({"curve_keys": 5}, "curve_keys must be None or a key folder path, got 5"),
    ],
)
def test_client_arguments_are_checked_by_name(kwargs: dict, message: str, tcp_endpoint: str) -> None:
    """A wrong type was a bare TypeError from a comparison (timeout="1"), or passed and failed later."""
    with pytest.raises(ConfigError) as err:
        Client(tcp_endpoint, **kwargs)
    assert str(err.value) == message
    with pytest.raises(
        InputTypeError, match=r"endpoint must be a string such as tcp://127\.0\.0\.1:5560 .*got 5560 \(int\)"
    ):
        Client(5560)  # type: ignore[arg-type]


def test_one_client_in_two_threads_is_refused_and_close_waits_for_the_request(tcp_endpoint: str) -> None:
    """A REQ socket carries one request at a time: a second thread's request failed as a timeout
    after its full wait, and close() from another thread closed a socket still being polled."""
    silent = zmq.Context.instance().socket(zmq.ROUTER)  # takes requests and never answers
    silent.bind(tcp_endpoint)
    client = Client(tcp_endpoint, timeout=0.5, retries=0)
    outcome: list[BaseException] = []

    def waiting() -> None:
        try:
            client.request([b"{}", b""])
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=waiting)
    try:
        worker.start()
        time.sleep(0.1)  # the worker is waiting for its reply
        start = time.monotonic()
        with pytest.raises(ConfigError, match="waiting for a reply in another thread"):
            client.request([b"{}", b""])
        assert time.monotonic() - start < 0.1  # said at once, not after a wait of its own
        client.close()  # waits for the worker's request to end, then closes
        worker.join(5)
        assert len(outcome) == 1 and isinstance(outcome[0], StreamTimeout)
        assert "CURVE" not in str(outcome[0])  # no keys: no key refusal to suspect
    finally:
        client.close()
        silent.close(linger=0)
