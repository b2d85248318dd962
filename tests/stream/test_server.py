"""The request/reply server over real loopback sockets: exact results, per-stream scheduling,
fuzzing, limits, back-pressure and a concurrent load test (in-process and via `rtseg serve`)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from rtseg.engine import Engine, load
from rtseg.errors import ConfigError
from rtseg.models import get_model, save_checkpoint
from rtseg.schedule import Clockwork
from rtseg.segmenter import Segmenter
from rtseg.stream import Client, ErrorCode, Server, ServerError, ServerLimits, StreamTimeout
from rtseg.stream.protocol import MAX_HEADER_BYTES, encode_array
from rtseg.stream.server import MIN_MAX_BYTES

REPO = Path(__file__).resolve().parents[2]


def raw_request(**fields: object) -> dict[str, object]:
    """A segment request header for one raw 64x48 BGR image."""
    image = {"name": "image", "encoding": "raw", "dtype": "uint8", "shape": [48, 64, 3]}
    return {"proto": "rtseg/1", "type": "segment", "image": image, **fields}


def request_frames(header: dict, image: bytes) -> list[bytes]:
    return [json.dumps(header).encode("utf-8"), image]


def reply_of(frames: Sequence[bytes]) -> dict:
    return json.loads(frames[0])


def scheduled_labels(engine: Engine, images: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """expected[c][k]: labels of image c using the deep features of keyframe image k."""
    lows = [engine.run_low(im) for im in images]
    deeps = [engine.run_deep(low) for low in lows]
    return [[engine.run_head(lows[c], deeps[k])[0] for k in range(len(images))] for c in range(len(images))]


# ------------------------------------------------------------------ results


def test_stateless_requests_match_the_engine(small_engine: Engine, tcp_endpoint: str, random_images) -> None:  # type: ignore[no-untyped-def]
    at_size, other = random_images(1, (48, 64, 3), seed=1)[0], random_images(1, (120, 200, 3), seed=2)[0]
    with Server(small_engine, bind=tcp_endpoint).start(), Client(tcp_endpoint, timeout=10) as client:
        r1 = client.segment(at_size, frame_index=3, capture_ts=123.5, labels="raw", overlay=True)
        r2 = client.segment(other, size="input")
        jpeg = encode_array("image", other, "jpeg", quality=95)[1]
        r3 = client.segment(jpeg, encoding="jpeg")
    np.testing.assert_array_equal(r1.labels, small_engine.run(at_size)[0])
    assert r1.is_keyframe and r1.deep_age == 0 and r1.frame_index == 3 and r1.header["capture_ts"] == 123.5
    assert r1.overlay is not None and r1.overlay.shape == (48, 64, 3)
    assert r1.image_shape == (48, 64, 3) and r1.input_size == (64, 48)
    assert r1.classes == small_engine.meta.classes
    assert {"queue", "decode", "resize", "low", "deep", "head", "encode", "total"} <= set(r1.timings_ms)
    resized = cv2.resize(other, (64, 48), interpolation=cv2.INTER_LINEAR)
    expected = cv2.resize(small_engine.run(resized)[0], (200, 120), interpolation=cv2.INTER_NEAREST_EXACT)
    np.testing.assert_array_equal(r2.labels, expected)
    assert r2.overlay is None and r2.image_shape == (120, 200, 3)
    assert r3.labels.shape == (48, 64)  # output resolution by default


def test_streams_run_the_keyframe_scheduler(small_engine: Engine, tcp_endpoint: str, random_images) -> None:  # type: ignore[no-untyped-def]
    images = random_images(3, (48, 64, 3), seed=3)
    expected = scheduled_labels(small_engine, images)
    order = [0, 1, 2, 0, 1, 2, 0, 1]
    with Server(small_engine, bind=tcp_endpoint, scheduler=lambda: Clockwork(3)).start() as server:
        with Client(tcp_endpoint, timeout=10) as client:
            replies = [
                client.segment(images[i], stream_id="robot/front", frame_index=n) for n, i in enumerate(order)
            ]
            forced = client.segment(images[2], stream_id="robot/front", keyframe=True)
            other = client.segment(images[1], stream_id="robot/rear")
        assert server.stats.streams == 2
    assert [r.is_keyframe for r in replies] == [True, False, False, True, False, False, True, False]
    assert [r.deep_age for r in replies] == [0, 1, 2, 0, 1, 2, 0, 1]
    key = 0
    for n, (i, reply) in enumerate(zip(order, replies, strict=True)):
        if reply.is_keyframe:
            key = i
        np.testing.assert_array_equal(reply.labels, expected[i][key], err_msg=f"frame {n}")
        assert reply.stream == "robot/front" and reply.frame_index == n
    assert forced.is_keyframe and forced.deep_age == 0
    np.testing.assert_array_equal(forced.labels, expected[2][2])
    assert other.is_keyframe  # a new stream starts with a keyframe


def test_the_default_stream_scheduler_is_clockwork_with_the_flow_warp(
    small_engine: Engine, tcp_endpoint: str, random_images
) -> None:  # type: ignore[no-untyped-def]
    """rtseg serve and docs/wire-format.md default to clockwork every 4 frames with the flow warp;
    the Python Server's default had no warp."""
    images = random_images(5, (48, 64, 3), seed=4)
    with Server(small_engine, bind=tcp_endpoint).start(), Client(tcp_endpoint, timeout=10) as client:
        replies = [client.segment(image, stream_id="cam") for image in images]
    assert [r.is_keyframe for r in replies] == [True, False, False, False, True]
    assert all("warp" in r.timings_ms for r in replies[1:4])


def test_two_clients_with_the_same_stream_id_keep_their_own_streams(  # type: ignore[no-untyped-def]
    small_engine: Engine, tcp_endpoint: str, random_images
) -> None:
    """Both call their camera "cam0": the second one's start reset the first one's stream, whose
    next frames were then answered from the other camera's deep features."""
    images = random_images(3, (48, 64, 3), seed=4)
    expected = scheduled_labels(small_engine, images)
    with (
        Server(small_engine, bind=tcp_endpoint, scheduler=lambda: Clockwork(3)).start() as server,
        Client(tcp_endpoint, timeout=10) as first,
        Client(tcp_endpoint, timeout=10) as second,
    ):
        a0 = first.segment(images[0], stream_id="cam0")
        b0 = second.segment(images[2], stream_id="cam0")
        a1 = first.segment(images[1], stream_id="cam0")
        b1 = second.segment(images[1], stream_id="cam0")
        assert server.stats.streams == 2
    assert a0.is_keyframe and b0.is_keyframe and not a1.is_keyframe and not b1.is_keyframe
    np.testing.assert_array_equal(a1.labels, expected[1][0])  # frame 1 on the first client's keyframe
    np.testing.assert_array_equal(b1.labels, expected[1][2])  # and on the second client's


def test_unknown_stream_is_refused_and_streams_are_bounded(small_engine: Engine, tcp_endpoint: str) -> None:
    image = np.zeros((48, 64, 3), np.uint8)
    header = raw_request(stream="s1")
    limits = ServerLimits(max_streams=2)
    with (
        Server(small_engine, bind=tcp_endpoint, limits=limits).start(),
        Client(tcp_endpoint, timeout=10) as c,
    ):
        first = reply_of(c.request(request_frames(header, image.tobytes())))
        assert first["status"] == "error" and first["error"]["code"] == "unknown_stream"
        for sid in ("s1", "s2", "s3"):  # s1 is evicted by s3
            started = reply_of(
                c.request(request_frames({**header, "stream": sid, "start": True}, image.tobytes()))
            )
            assert started["status"] == "ok" and started["is_keyframe"] is True
        evicted = reply_of(c.request(request_frames(header, image.tobytes())))
        kept = reply_of(c.request(request_frames({**header, "stream": "s3"}, image.tobytes())))
    assert evicted["error"]["code"] == "unknown_stream" and "start: true" in evicted["error"]["message"]
    assert kept["status"] == "ok" and kept["deep_age"] == 1


# ------------------------------------------------------------------ acceptance 4: fuzz


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _big_png_bomb() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    width, height = 20000, 10000  # 200 megapixels, 1-bit grayscale
    row = b"\x00" * (1 + width // 8)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(row * height, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# bad_inputs() cases whose reply cannot echo the id
UNREADABLE_ID = {
    "not JSON",
    "not UTF-8",
    "JSON array",
    "JSON nested too deep",
    "NaN timestamp",
    "Infinity in an unknown field",
    "header over 64 KiB",
    "bad id",
}


def bad_inputs() -> dict[str, tuple[list[bytes], str]]:
    """name -> (frames a REQ socket sends, expected error code)."""
    image = np.random.default_rng(9).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    raw = image.tobytes()
    base = {
        "proto": "rtseg/1",
        "type": "segment",
        "id": 1,
        "image": {"name": "image", "encoding": "raw", "dtype": "uint8", "shape": [48, 64, 3]},
    }

    def h(**changes: object) -> bytes:
        return json.dumps({**base, **changes}).encode("utf-8")

    def img(**changes: object) -> bytes:
        return h(image={**base["image"], **changes})

    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    png = _png(image)
    return {
        "one frame": ([h()], "malformed_multipart"),
        "three frames": ([h(), raw, b"extra"], "malformed_multipart"),
        "not JSON": ([b"{oops", raw], "bad_json"),
        "not UTF-8": ([b"\xff\xfe\xfa\xfb", raw], "bad_json"),
        "JSON array": ([b"[1, 2, 3]", raw], "bad_json"),
        "JSON nested too deep": ([b"[" * 30000 + b"]" * 30000, raw], "bad_json"),
        "header over 64 KiB": ([h(pad="x" * 70_000), raw], "too_large"),
        "unknown version": ([h(proto="rtseg/2"), raw], "unsupported_version"),
        "no protocol": (
            [json.dumps({k: v for k, v in base.items() if k != "proto"}).encode(), raw],
            "bad_header",
        ),
        "wrong type": ([h(type="segmnet"), raw], "bad_header"),
        "NaN timestamp": ([h()[:-1] + b', "capture_ts": NaN}', raw], "bad_json"),  # not JSON
        "Infinity in an unknown field": ([h()[:-1] + b', "zzz": [-Infinity]}', raw], "bad_json"),
        "timestamp past float's range": ([h()[:-1] + b', "capture_ts": 1e400}', raw], "bad_header"),
        "bad id": ([h(id=[1]), raw], "bad_header"),
        "negative deadline": ([h(deadline_ms=-5), raw], "bad_header"),
        "deadline as text": ([h(deadline_ms="soon"), raw], "bad_header"),
        "bad stream id": ([h(stream="two words", start=True), raw], "bad_header"),
        "start without stream": ([h(start=True), raw], "bad_header"),
        "unknown stream": ([h(stream="never-started"), raw], "unknown_stream"),
        "float32 image": ([img(dtype="float32"), image.astype(np.float32).tobytes()], "bad_dtype"),
        "unknown dtype": ([img(dtype="int7"), raw], "bad_dtype"),
        "16-bit PNG": ([img(encoding="png"), _png(image.astype(np.uint16) * 257)], "bad_dtype"),
        "2-D raw shape": ([img(shape=[48, 64]), raw[: 48 * 64]], "bad_shape"),
        "raw bytes short of the shape": ([h(), raw[:-1]], "bad_shape"),
        "negative shape": ([img(shape=[48, -64, 3]), raw], "bad_shape"),
        "grayscale PNG": ([img(encoding="png"), _png(image[..., 0])], "bad_shape"),
        "BGRA PNG": ([img(encoding="png"), _png(cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))], "bad_shape"),
        "declared shape differs": ([img(encoding="png", shape=[64, 48, 3]), png], "bad_shape"),
        "truncated JPEG": ([img(encoding="jpeg"), jpeg[: len(jpeg) // 2]], "undecodable_image"),
        "truncated PNG": ([img(encoding="png"), png[: len(png) // 2]], "undecodable_image"),
        "text as PNG": ([img(encoding="png"), b"this is not an image, just text"], "undecodable_image"),
        "PNG as JPEG": ([img(encoding="jpeg"), png], "undecodable_image"),
        "200-megapixel PNG": ([img(encoding="png"), _big_png_bomb()], "too_large"),
        "200-megapixel raw": ([img(shape=[10000, 20000, 3]), raw], "too_large"),
        "frames over max_bytes together": ([h(pad="x" * 60_000), b"\0" * 1_000_000], "too_large"),
    }


def test_fuzz_every_bad_input_gets_an_error_reply(small_engine: Engine, tcp_endpoint: str) -> None:
    limits = ServerLimits(max_bytes=1_048_576)  # 1 MiB: the last case's frames fit alone, not together
    cases = bad_inputs()
    assert len(cases) >= 10
    rng = np.random.default_rng(1234)
    good_image = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    codes = {c.value for c in ErrorCode} - {"internal_error", "busy"}
    with Server(small_engine, bind=tcp_endpoint, limits=limits).start() as server:
        with Client(tcp_endpoint, timeout=10, retries=0) as client:
            for name, (frames, code) in cases.items():
                t0 = time.perf_counter()
                reply = client.request(frames)
                elapsed = time.perf_counter() - t0
                assert len(reply) == 1, name
                header = reply_of(reply)
                assert header["status"] == "error", name
                assert header["error"]["code"] == code, (name, header["error"])
                assert header["error"]["message"], name
                # the id is echoed whenever the header is a readable JSON object (wrong proto included)
                assert header["id"] == (None if name in UNREADABLE_ID else 1), (name, header)
                assert elapsed < 2.0, f"{name}: {elapsed:.2f} s (decoded instead of refused?)"
            # 1,000 random byte strings, in every position a request has
            header_ok = json.dumps(
                {
                    "proto": "rtseg/1",
                    "type": "segment",
                    "id": 7,
                    "image": {"name": "image", "encoding": "raw", "dtype": "uint8", "shape": [48, 64, 3]},
                }
            ).encode()
            seen: dict[str, int] = {}
            for i in range(1000):
                junk = rng.bytes(int(rng.integers(0, 4096)))
                kind = i % 5
                if kind == 0:
                    frames = [junk]
                elif kind == 1:
                    frames = [junk, junk]
                elif kind == 2:
                    encoding = ("raw", "png", "jpeg")[i % 3]
                    frames = [header_ok.replace(b'"raw"', f'"{encoding}"'.encode()), junk]
                elif kind == 3:  # a valid header with random bytes flipped
                    mutated = bytearray(header_ok)
                    for pos in rng.integers(0, len(mutated), size=3):
                        mutated[pos] = int(rng.integers(0, 256))
                    frames = [bytes(mutated), junk]
                else:
                    frames = [junk[:8], junk, junk[8:]]
                reply = client.request(frames)
                header = reply_of(reply)
                assert header["status"] == "error" and header["error"]["code"] in codes, (i, header)
                seen[header["error"]["code"]] = seen.get(header["error"]["code"], 0) + 1
            # and the server still answers a good request, correctly
            good = client.segment(good_image)
        stats = server.stats
    print(f"\nfuzz: {len(cases)} kinds + 1000 random; random replies by code: {seen}")
    np.testing.assert_array_equal(good.labels, small_engine.run(good_image)[0])
    assert "internal_error" not in stats.errors
    assert sum(stats.errors.values()) == len(cases) + 1000 and stats.ok == 1


def _dealer_replies(engine: Engine, endpoint: str, messages: list[list[bytes]]) -> list[list[bytes]]:
    """Each message sent from one DEALER socket to a server, and the reply it got."""
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    replies = []
    try:
        with Server(engine, bind=endpoint).start():
            dealer.connect(endpoint)
            for frames in messages:
                dealer.send_multipart(frames)
                assert dealer.poll(10_000)
                replies.append(dealer.recv_multipart())
    finally:
        dealer.close(linger=0)
        ctx.term()
    return replies


def test_dealer_peers_and_empty_requests(small_engine: Engine, tcp_endpoint: str) -> None:
    header, image = request_frames(raw_request(id="d"), bytes(48 * 64 * 3))
    messages = [[b"", header, image], [b""], [b"", b"", b""]]
    ok, empty, blank = _dealer_replies(small_engine, tcp_endpoint, messages)
    assert ok[0] == b"" and reply_of(ok[1:])["status"] == "ok" and len(ok) == 3
    assert reply_of(empty[1:])["error"]["code"] == "malformed_multipart"
    assert reply_of(blank[1:])["error"]["code"] == "bad_json"


def test_a_dealer_without_delimiter_and_an_empty_body_frame_gets_one_error(
    small_engine: Engine, tcp_endpoint: str
) -> None:
    """An empty frame after the header was taken for the delimiter, so the reply echoed the request
    (header and image) as its envelope and gave no id."""
    header, image = request_frames(raw_request(id=7), bytes(48 * 64 * 3))
    for reply in _dealer_replies(small_engine, tcp_endpoint, [[header, b""], [header, image, b""]]):
        assert len(reply) == 1  # the error alone: no envelope echoed
        assert reply_of(reply)["id"] == 7 and reply_of(reply)["status"] == "error"


class _Proxy:
    """zmq.proxy(ROUTER, DEALER) in a thread, in front of a server: the broker a C++ or Python
    deployment puts between its clients and workers. Each hop adds a routing frame."""

    def __init__(self, frontend: str, backend: str) -> None:
        self.ctx = zmq.Context()
        self._front = self.ctx.socket(zmq.ROUTER)
        self._back = self.ctx.socket(zmq.DEALER)
        self._front.bind(frontend)
        self._back.connect(backend)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            zmq.proxy(self._front, self._back)
        except zmq.ContextTerminated:
            pass
        finally:
            self._front.close(linger=0)
            self._back.close(linger=0)

    def close(self) -> None:
        self.ctx.term()
        self._thread.join(5)


def test_requests_through_zmq_proxies_get_their_replies(  # type: ignore[no-untyped-def]
    small_engine: Engine, tcp_endpoint: str, free_port, random_images
) -> None:
    """REQ -> zmq.proxy(ROUTER, DEALER) [-> another proxy] -> the server: the server took only
    [identity, empty] as the envelope and answered none of them. Replies (errors too) go back on
    the whole envelope, and two clients behind one proxy keep their own streams."""
    images = random_images(3, (48, 64, 3), seed=4)
    expected = scheduled_labels(small_engine, images)
    front1, front2 = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    with Server(small_engine, bind=tcp_endpoint, scheduler=lambda: Clockwork(3)).start() as server:
        proxies = [_Proxy(front1, tcp_endpoint)]
        proxies.append(_Proxy(front2, front1))  # two hops: proxy 2 -> proxy 1 -> server
        try:
            with Client(front1, timeout=10) as first, Client(front2, timeout=10) as second:
                one = first.segment(images[0])
                np.testing.assert_array_equal(one.labels, small_engine.run(images[0])[0])
                a0 = first.segment(images[0], stream_id="cam0")
                b0 = second.segment(images[2], stream_id="cam0")
                a1 = first.segment(images[1], stream_id="cam0")
                b1 = second.segment(images[1], stream_id="cam0")
                bad = request_frames(raw_request(id=5, stream="bad id"), bytes(48 * 64 * 3))
                refused = second.request(bad)
        finally:
            for proxy in reversed(proxies):
                proxy.close()
        assert server.stats.streams == 2
    assert len(refused) == 1 and reply_of(refused)["id"] == 5
    assert reply_of(refused)["error"]["code"] == "bad_header"
    assert a0.is_keyframe and b0.is_keyframe and not a1.is_keyframe and not b1.is_keyframe
    np.testing.assert_array_equal(a1.labels, expected[1][0])
    np.testing.assert_array_equal(b1.labels, expected[1][2])


def test_a_proxys_renewed_connection_keeps_its_clients_streams(
    small_engine: Engine, tcp_endpoint: str
) -> None:
    """Streams were keyed by the whole envelope, whose first frame names only the proxy's own
    connection: when it was renewed (ZMQ_MAXMSGSIZE drops it for one client's oversized frame),
    every client behind the proxy got unknown_stream. A DEALER sending [client id, empty, ...] is
    the proxy's backend; a second DEALER is its renewed connection."""
    image = bytes(48 * 64 * 3)
    ctx = zmq.Context()
    replies = []
    try:
        with Server(small_engine, bind=tcp_endpoint, scheduler=lambda: Clockwork(3)).start():
            for start in (True, False):
                backend = ctx.socket(zmq.DEALER)
                backend.setsockopt(zmq.LINGER, 0)
                backend.connect(tcp_endpoint)
                header = raw_request(id=int(start), stream="cam0", start=start)
                backend.send_multipart([b"client-a", b"", *request_frames(header, image)])
                assert backend.poll(10_000)
                replies.append(backend.recv_multipart())
                backend.close(linger=0)
    finally:
        ctx.term()
    first, second = (reply_of(r[2:]) for r in replies)
    assert all(r[:2] == [b"client-a", b""] for r in replies)
    assert first["status"] == "ok" and first["is_keyframe"]
    assert second["status"] == "ok" and not second["is_keyframe"] and second["deep_age"] == 1


def test_a_request_envelope_of_more_than_max_hops_is_refused(small_engine: Engine, tcp_endpoint: str) -> None:
    """Routing frames up to the first empty frame are the envelope, echoed on the reply; past
    MAX_HOPS of them the request is malformed, and the message names the limit."""
    from rtseg.stream.server import MAX_HOPS

    image = bytes(48 * 64 * 3)
    header = json.dumps(raw_request(id=3)).encode()
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    replies = []
    try:
        with Server(small_engine, bind=tcp_endpoint).start():
            dealer.connect(tcp_endpoint)
            # the server's ROUTER adds the dealer's identity: MAX_HOPS routing frames, then one more
            for hops in (MAX_HOPS - 1, MAX_HOPS):
                route = [f"hop{i}".encode() for i in range(hops)]
                dealer.send_multipart([*route, b"", header, image])
                assert dealer.poll(10_000), hops
                replies.append(dealer.recv_multipart())
    finally:
        dealer.close(linger=0)
        ctx.term()
    fits, too_many = replies
    route = [f"hop{i}".encode() for i in range(MAX_HOPS - 1)]
    assert fits[:MAX_HOPS] == [*route, b""] and reply_of(fits[MAX_HOPS:])["status"] == "ok"
    assert len(too_many) == 1  # only the peer itself can be answered
    error = reply_of(too_many)["error"]
    assert error["code"] == "malformed_multipart" and f"at most {MAX_HOPS} routing frames" in error["message"]


def test_request_ids_cover_the_int64_range_and_are_echoed_exactly(
    small_engine: Engine, tcp_endpoint: str
) -> None:
    """Integer ids were limited to |id| < 2**53; a C++ client's int64 ids past that were refused."""
    image = bytes(48 * 64 * 3)
    with Server(small_engine, bind=tcp_endpoint).start(), Client(tcp_endpoint, timeout=10) as client:
        echoed = [
            reply_of(client.request(request_frames(raw_request(id=i), image)))
            for i in (2**53, 2**63 - 1, -(2**63), -1)
        ]
        refused = [
            reply_of(client.request(request_frames(raw_request(id=i), image))) for i in (2**63, -(2**63) - 1)
        ]
    assert [r["status"] for r in echoed] == ["ok"] * 4
    assert [r["id"] for r in echoed] == [2**53, 2**63 - 1, -(2**63), -1]
    for reply in refused:
        assert reply["error"]["code"] == "bad_header" and reply["id"] is None
        assert "-2**63..2**63-1" in reply["error"]["message"], reply


def test_images_with_trailing_zero_padding_are_segmented(small_engine: Engine, tcp_endpoint: str) -> None:
    """JPEGs with 15 or more bytes of zero padding, and PNGs with any, were refused as truncated."""
    image = np.random.default_rng(6).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with Server(small_engine, bind=tcp_endpoint).start(), Client(tcp_endpoint, timeout=10) as client:
        for encoding in ("jpeg", "png"):
            padded = encode_array("image", image, encoding)[1] + bytes(4096)
            reply = client.segment(padded, encoding=encoding)
            assert reply.labels.shape == (48, 64), encoding
    expected = small_engine.run(image)[0]
    np.testing.assert_array_equal(reply.labels, expected)  # the PNG is lossless


def test_oversized_frame_is_cut_by_libzmq_and_the_server_survives(
    small_engine: Engine, tcp_endpoint: str
) -> None:
    limits = ServerLimits(max_bytes=1_000_000)
    image = np.zeros((48, 64, 3), np.uint8)
    with Server(small_engine, bind=tcp_endpoint, limits=limits).start() as server:
        with Client(tcp_endpoint, timeout=1.0, retries=0) as client:
            t0 = time.monotonic()
            with pytest.raises(StreamTimeout):
                client.request([b'{"proto": "rtseg/1"}', b"\0" * 2_000_000])
            assert time.monotonic() - t0 < 2.0
        with Client(tcp_endpoint, timeout=10) as client:
            assert client.segment(image).labels.shape == (48, 64)
        assert server.stats.received == 1  # the oversized request never reached the loop


class CountingServer(Server):
    """Counts the requests that reached the model."""

    segmented = 0

    def _segment(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        CountingServer.segmented += 1
        return super()._segment(*args, **kwargs)


@pytest.mark.parametrize(
    ("shape", "reply", "refused"),
    [
        ([70000, 1, 3], {"overlay": True}, "jpeg holds at most 65500 pixels a side"),
        ([1, 65501, 3], {"overlay": True}, "jpeg holds at most 65500 pixels a side"),
        ([1, 65500, 3], {"overlay": True}, None),  # JPEG's largest side
        ([1, 1_000_001, 3], {"size": "input"}, "png holds at most 1000000 pixels a side"),
        ([1, 1_000_001, 3], {"size": "input", "labels": "raw"}, None),  # raw has no side limit
        ([1, 1_000_001, 3], {}, None),  # labels at the model's output size
    ],
)
def test_a_reply_its_encoders_cannot_write_is_refused_before_the_model_runs(
    shape: list[int], reply: dict, refused: str | None, small_engine: Engine, tcp_endpoint: str
) -> None:
    """The overlay is a JPEG of the request image's size (at most 65,500 px a side) and labels
    at size 'input' a PNG (libpng: 1,000,000): past that the encoder failed after the model ran,
    an internal_error with a traceback in the server's log."""
    image = {"name": "image", "encoding": "raw", "dtype": "uint8", "shape": shape}
    header = raw_request(id=3, image=image, reply=reply)
    CountingServer.segmented = 0
    with CountingServer(small_engine, bind=tcp_endpoint).start() as server:
        with Client(tcp_endpoint, timeout=30, retries=0) as client:
            answer = reply_of(client.request(request_frames(header, bytes(int(np.prod(shape))))))
        stats = server.stats
    if refused is None:
        assert answer["status"] == "ok", answer
        assert stats.ok == 1 and CountingServer.segmented == 1
    else:
        assert answer["error"]["code"] == "too_large" and refused in answer["error"]["message"], answer
        assert answer["id"] == 3 and stats.errors == {"too_large": 1} and CountingServer.segmented == 0


def test_the_engine_and_scheduler_arguments_are_checked(small_engine: Engine, tcp_endpoint: str) -> None:
    """Server(segmenter) built and served, then failed every request (internal_error: no .meta);
    Server(engine, scheduler="clockwork") or a Scheduler instance raised a bare TypeError."""
    with (
        Segmenter(engine=small_engine) as seg,
        pytest.raises(ConfigError, match=r"or a Segmenter's \.engine\), got Segmenter"),
    ):
        Server(seg, bind=tcp_endpoint)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"engine must be an rtseg Engine.*got str"):
        Server("espnet", bind=tcp_endpoint)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="got a Clockwork instance: every stream needs its own"):
        Server(small_engine, bind=tcp_endpoint, scheduler=Clockwork(3))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown scheduler 'clockworks'"):
        Server(small_engine, bind=tcp_endpoint, scheduler="clockworks")
    with pytest.raises(ConfigError, match=r"scheduler must return a Scheduler.*got int"):
        Server(small_engine, bind=tcp_endpoint, scheduler=lambda: 3)  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError, match=r"zero-argument factory.*got 3"):
        Server(small_engine, bind=tcp_endpoint, scheduler=3)  # type: ignore[arg-type]
    # a name works as rtseg serve --scheduler does: adaptive decides its own keyframes
    with (
        Server(small_engine, bind=tcp_endpoint, scheduler="adaptive").start(),
        Client(tcp_endpoint, timeout=10, retries=0) as client,
    ):
        image = np.zeros((48, 64, 3), np.uint8)
        first, second = (client.segment(image, stream_id="cam") for _ in range(2))
    assert first.is_keyframe and not second.is_keyframe
    assert "change" in second.timings_ms


def test_max_bytes_must_leave_room_for_a_request(small_engine: Engine, tcp_endpoint: str) -> None:
    """libzmq drops every frame over max_bytes (ZMQ_MAXMSGSIZE): max_bytes=10 started a server
    that could answer nothing. The smallest allowed takes the largest header and a small image."""
    for bad in (10, MIN_MAX_BYTES - 1, 2**63):  # past an int64, setting ZMQ_MAXMSGSIZE overflowed
        with pytest.raises(
            ConfigError, match=rf"max_bytes must be in {MIN_MAX_BYTES}\.\.2\*\*63-1.*got {bad}"
        ):
            ServerLimits(max_bytes=bad)
    image = np.zeros((120, 160, 3), np.uint8)
    spec = {"name": "image", "encoding": "raw", "dtype": "uint8", "shape": [120, 160, 3]}
    header = json.dumps(raw_request(id=1, image=spec)).encode()
    header = header[:-1] + b', "pad": "' + b"x" * (MAX_HEADER_BYTES - len(header) - 11) + b'"}'
    assert len(header) == MAX_HEADER_BYTES
    limits = ServerLimits(max_bytes=MIN_MAX_BYTES)
    with (
        Server(small_engine, bind=tcp_endpoint, limits=limits).start(),
        Client(tcp_endpoint, timeout=10, retries=0) as client,
    ):
        answer = reply_of(client.request([header, image.tobytes()]))
    assert answer["status"] == "ok", answer


def test_a_full_queue_answers_busy_at_once(small_engine: Engine, tcp_endpoint: str) -> None:
    limits = ServerLimits(queue_size=1)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    header = raw_request()
    ctx = zmq.Context()
    dealers = [ctx.socket(zmq.DEALER) for _ in range(8)]
    try:
        with Server(small_engine, bind=tcp_endpoint, workers=1, limits=limits).start():
            for d in dealers:
                d.setsockopt(zmq.LINGER, 0)
                d.connect(tcp_endpoint)
            time.sleep(0.3)  # all connected, so the requests arrive together
            for k, d in enumerate(dealers):
                d.send_multipart([b"", json.dumps({**header, "id": k}).encode(), image.tobytes()])
            codes = []
            for k, d in enumerate(dealers):
                assert d.poll(20_000), "a request got no reply"
                reply = reply_of(d.recv_multipart()[1:])
                assert reply["id"] == k  # busy replies echo the id too
                codes.append(reply["status"] if reply["status"] == "ok" else reply["error"]["code"])
    finally:
        for d in dealers:
            d.close(linger=0)
        ctx.term()
    assert set(codes) == {"ok", "busy"} and len(codes) == 8, codes


class SlowServer(Server):
    """Each request takes 0.4 s more: a server under more load than it can carry."""

    def _segment(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.4)
        return super()._segment(*args, **kwargs)


def test_requests_queued_past_their_deadline_are_not_run(small_engine: Engine, tcp_endpoint: str) -> None:
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    header = raw_request(deadline_ms=150)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        with SlowServer(small_engine, bind=tcp_endpoint, workers=1).start() as server:
            dealer.connect(tcp_endpoint)
            time.sleep(0.2)
            for k in range(3):
                dealer.send_multipart([b"", json.dumps({**header, "id": k}).encode(), image.tobytes()])
            replies = []
            for _ in range(3):
                assert dealer.poll(10_000), "a request got no reply"
                replies.append(reply_of(dealer.recv_multipart()[1:]))
            stats = server.stats
    finally:
        dealer.close(linger=0)
        ctx.term()
    replies.sort(key=lambda r: r["id"])
    assert replies[0]["status"] == "ok"
    for r in replies[1:]:  # queued behind a 0.4 s request with 150 ms to live
        assert r["error"]["code"] == "expired" and "past its deadline_ms 150" in r["error"]["message"]
    assert stats.ok == 1 and stats.errors == {"expired": 2}


def test_stop_answers_the_accepted_requests_and_refuses_new_ones(
    small_engine: Engine, tcp_endpoint: str
) -> None:
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    header = raw_request()
    ctx = zmq.Context()
    dealers = [ctx.socket(zmq.DEALER) for _ in range(4)]
    server = SlowServer(small_engine, bind=tcp_endpoint, workers=1).start()
    try:
        for d in dealers:
            d.setsockopt(zmq.LINGER, 0)
            d.connect(tcp_endpoint)
        time.sleep(0.3)
        for k, d in enumerate(dealers[:3]):  # one runs, two wait in the queue
            d.send_multipart([b"", json.dumps({**header, "id": k}).encode(), image.tobytes()])
        time.sleep(0.2)
        closing = threading.Thread(target=server.close)
        closing.start()
        time.sleep(0.1)
        dealers[3].send_multipart([b"", json.dumps({**header, "id": 3}).encode(), image.tobytes()])
        replies = []
        for d in dealers:
            assert d.poll(10_000), "a request got no reply"
            replies.append(reply_of(d.recv_multipart()[1:]))
        closing.join(10)
        assert not closing.is_alive()
    finally:
        server.close()
        for d in dealers:
            d.close(linger=0)
        ctx.term()
    assert [r["status"] for r in replies[:3]] == ["ok", "ok", "ok"] and [r["id"] for r in replies] == [
        0,
        1,
        2,
        3,
    ]
    assert replies[3]["error"]["code"] == "busy" and "shutting down" in replies[3]["error"]["message"]
    assert server.stats.ok == 3


def test_a_request_that_arrives_after_the_drain_is_refused_at_once(
    small_engine: Engine, tcp_endpoint: str, monkeypatch
) -> None:
    """A request that reached a closing server after its drain had ended (until close() closed the
    socket) got no reply: its client waited its whole timeout and was told the server was down or
    overloaded. It is refused as the drain refuses, busy, 'shutting down', at once."""
    image = np.zeros((48, 64, 3), np.uint8)
    server = Server(small_engine, bind=tcp_endpoint, workers=1)
    drain, drained = server._drain, threading.Event()

    def drain_then_wait(poller: zmq.Poller) -> None:
        drain(poller)
        drained.set()
        server._router.poll(10_000)  # on the socket thread, its owner: until a request is waiting

    monkeypatch.setattr(server, "_drain", drain_then_wait)
    server.start()
    closing = threading.Thread(target=server.close)
    try:
        with Client(tcp_endpoint, timeout=5, retries=0) as client:
            client.segment(image)  # connected and answered
            closing.start()
            assert drained.wait(10)
            t0 = time.monotonic()
            with pytest.raises(ServerError) as refused:
                client.segment(image)
            took = time.monotonic() - t0
        closing.join(10)
        assert not closing.is_alive()
    finally:
        server.close()
    assert refused.value.code == "busy" and "shutting down" in refused.value.detail, refused.value
    assert took < 2, f"the refusal took {took:.2f} s"
    assert server.stats.ok == 1 and server.stats.errors == {"busy": 1} and server.stats.received == 2
    # closed: nothing can answer now, and the client's timeout says what may be the cause
    with (
        Client(tcp_endpoint, timeout=0.3, retries=0) as late,
        pytest.raises(StreamTimeout, match="server down"),
    ):
        late.segment(image)


@pytest.mark.parametrize("drain_s", [0.0, 0.1])
def test_requests_still_queued_when_the_drain_ends_are_refused(
    small_engine: Engine, tcp_endpoint: str, drain_s: float
) -> None:
    """With --drain 0, or a drain that ran out, the accepted requests still waiting in the queue
    were dropped without a reply (their clients timed out), though --drain 0 was to refuse them.
    They are refused as busy; the one running is not waited for (its reply is undeliverable)."""
    image = np.zeros((48, 64, 3), np.uint8)
    header = raw_request()
    server = SlowServer(small_engine, bind=tcp_endpoint, workers=1, limits=ServerLimits(drain_s=drain_s))
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        server.start()
        dealer.connect(tcp_endpoint)
        time.sleep(0.2)
        for k in range(3):  # one runs (0.4 s, past the drain), two wait in the queue
            dealer.send_multipart([b"", json.dumps({**header, "id": k}).encode(), image.tobytes()])
        time.sleep(0.1)
        server.close()
        replies = []
        while dealer.poll(1000):
            replies.append(reply_of(dealer.recv_multipart()[1:]))
    finally:
        server.close()
        dealer.close(linger=0)
        ctx.term()
    assert [(r["id"], r["error"]["code"]) for r in replies] == [(1, "busy"), (2, "busy")], replies
    assert all("shutting down" in r["error"]["message"] for r in replies)
    assert server.stats.errors == {"busy": 2}


def test_close_from_another_thread_drains_a_server_run_by_serve_forever(
    small_engine: Engine, tcp_endpoint: str
) -> None:
    """close() did not wait for serve_forever()'s loop (only for start()'s): it closed the ROUTER
    under the serving thread, which died with ZMQError, and the accepted requests got no reply."""
    image = np.zeros((48, 64, 3), np.uint8)
    header = raw_request()
    server = SlowServer(small_engine, bind=tcp_endpoint, workers=1)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            server.serve_forever()
        except BaseException as exc:
            errors.append(exc)

    serving = threading.Thread(target=serve)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        serving.start()
        dealer.connect(tcp_endpoint)
        for k in range(2):  # one runs, one waits in the queue: the drain answers both
            dealer.send_multipart([b"", json.dumps({**header, "id": k}).encode(), image.tobytes()])
        time.sleep(0.2)
        server.close()
        replies = []
        while len(replies) < 2 and dealer.poll(3000):
            replies.append(reply_of(dealer.recv_multipart()[1:]))
        serving.join(10)
    finally:
        server.close()
        dealer.close(linger=0)
        ctx.term()
    assert not serving.is_alive() and errors == []
    assert [(r["id"], r["status"]) for r in replies] == [(0, "ok"), (1, "ok")]
    assert server.stats.ok == 2


def test_serve_forever_returns_with_the_port_free_when_another_thread_closes(
    small_engine: Engine, tcp_endpoint: str
) -> None:
    """serve_forever() returned while the other thread's close() was still closing: a server
    started again on the same port right after failed with 'Address already in use'."""
    for _ in range(3):
        server = Server(small_engine, bind=tcp_endpoint, workers=1)
        threading.Timer(0.2, server.close).start()
        server.serve_forever()
        Server(small_engine, bind=tcp_endpoint, workers=1).close()  # the port is free


def test_close_from_a_signal_handler_stops_serve_forever_cleanly(
    small_engine: Engine, tcp_endpoint: str
) -> None:
    """The handler ran close() on the serving thread itself, which closed the sockets under its
    own loop: serve_forever() ended with ZMQError 'Socket operation on non-socket'."""
    import os
    import signal

    server = Server(small_engine, bind=tcp_endpoint, workers=1)
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: server.close())
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        server.serve_forever()  # returns, no ZMQError
    finally:
        signal.signal(signal.SIGUSR1, previous)
    Server(small_engine, bind=tcp_endpoint, workers=1).close()  # closed: the port is free


def test_a_closed_server_says_it_is_closed(small_engine: Engine, tcp_endpoint: str) -> None:
    """A closed, never-started server said "already started" to start() and serve_forever()."""
    server = Server(small_engine, bind=tcp_endpoint)
    server.close()
    for serve in (server.start, server.serve_forever):
        with pytest.raises(ConfigError, match="this server is closed"):
            serve()
    with (
        Server(small_engine, bind=tcp_endpoint).start() as started,
        pytest.raises(ConfigError, match="already started"),
    ):
        started.start()


def test_a_drain_of_centuries_closes(small_engine: Engine, tcp_endpoint: str) -> None:
    """rtseg serve --drain 1e10 is finite, so allowed: close() raised OverflowError joining the
    workers for that long (past threading.TIMEOUT_MAX)."""
    server = Server(small_engine, bind=tcp_endpoint, limits=ServerLimits(drain_s=1e10)).start()
    with Client(tcp_endpoint, timeout=10, retries=0) as client:
        client.segment(np.zeros((48, 64, 3), np.uint8))
    t0 = time.monotonic()
    server.close()
    assert time.monotonic() - t0 < 5


def test_replies_sent_during_the_drain_reach_their_clients(small_engine: Engine, tmp_path: Path) -> None:
    """close() closed the ROUTER with linger 0 right after the drain handed it the last reply: a
    large one (8 MB of raw 4K labels, not yet written to the connection) was discarded, though
    counted as ok."""
    image = np.zeros((2160, 3840, 3), np.uint8)
    spec = {"name": "image", "encoding": "raw", "dtype": "uint8", "shape": [2160, 3840, 3]}
    reply = {"labels": "raw", "size": "input"}
    ctx = zmq.Context()
    try:
        for trial in range(2):  # without the bounded linger every trial lost its last reply (8 of 8)
            endpoint = f"ipc://{tmp_path / f'drain{trial}.sock'}"
            server = SlowServer(small_engine, bind=endpoint, limits=ServerLimits(drain_s=10)).start()
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            try:
                dealer.connect(endpoint)
                for k in range(2):
                    header = {"proto": "rtseg/1", "type": "segment", "id": k, "image": spec, "reply": reply}
                    dealer.send_multipart([b"", json.dumps(header).encode(), image.tobytes()])
                time.sleep(0.2)  # both accepted, neither answered: the drain answers them
                closing = threading.Thread(target=server.close)
                closing.start()
                statuses = []
                while len(statuses) < 2 and dealer.poll(3000):
                    statuses.append(reply_of(dealer.recv_multipart()[1:])["status"])
                closing.join(10)
            finally:
                server.close()
                dealer.close(linger=0)
            assert server.stats.ok == 2
            assert statuses == ["ok", "ok"], f"trial {trial}: {len(statuses)} of 2 replies arrived"
    finally:
        ctx.term()


# ------------------------------------------------------------------ acceptance 3: load


def run_load(
    endpoint: str,
    images: Sequence[np.ndarray],
    expected: list[list[np.ndarray]],
    *,
    clients: int,
    requests: int,
    key_interval: int,
    min_agreement: float = 1.0,
) -> list[float]:
    """``clients`` threads, each with its own Client and stream, ``requests`` each; every reply is
    checked against the request it answers. Returns the latencies in ms."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []
    start = threading.Barrier(clients)

    def client_thread(k: int) -> None:
        try:
            with Client(endpoint, timeout=60, retries=0) as client:
                start.wait()
                key = None
                for n in range(requests):
                    i = (k + n) % len(images)
                    t0 = time.perf_counter()
                    reply = client.segment(
                        images[i], stream_id=f"client-{k}", frame_index=n, capture_ts=k + n / 1e3
                    )
                    latencies[k].append((time.perf_counter() - t0) * 1000)
                    if (
                        reply.stream != f"client-{k}"
                        or reply.frame_index != n
                        or reply.header["capture_ts"] != k + n / 1e3
                    ):
                        failures.append(
                            f"client {k} request {n}: got the reply for {reply.stream} {reply.frame_index}"
                        )
                    if reply.is_keyframe != (n % key_interval == 0) or reply.deep_age != n % key_interval:
                        failures.append(
                            f"client {k} request {n}: keyframe {reply.is_keyframe} age {reply.deep_age}"
                        )
                    if reply.is_keyframe:
                        key = i
                    agreement = float(np.mean(reply.labels == expected[i][key]))
                    if agreement < min_agreement:
                        failures.append(
                            f"client {k} request {n}: labels agree {agreement:.2%} with the expected"
                        )
        except BaseException as exc:
            failures.append(f"client {k}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client_thread, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:10]
    flat = [v for per in latencies for v in per]
    assert len(flat) == clients * requests
    return flat


def _report(name: str, latencies: list[float], elapsed: float) -> None:
    p50, p99 = np.percentile(latencies, [50, 99])
    print(
        f"\n{name}: {len(latencies)} requests in {elapsed:.1f} s ({len(latencies) / elapsed:.1f}/s), "
        f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms"
    )


def test_concurrent_clients_in_process(small_engine: Engine, tcp_endpoint: str, random_images) -> None:  # type: ignore[no-untyped-def]
    images = random_images(4, (48, 64, 3), seed=11)
    expected = scheduled_labels(small_engine, images)
    assert all((expected[i][i] != expected[j][j]).mean() > 0.05 for i in range(4) for j in range(i))
    with Server(small_engine, bind=tcp_endpoint, workers=2, scheduler=lambda: Clockwork(4)).start() as server:
        t0 = time.perf_counter()
        latencies = run_load(tcp_endpoint, images, expected, clients=8, requests=12, key_interval=4)
        _report("8 clients x 12 requests, in-process server, 2 workers", latencies, time.perf_counter() - t0)
        stats = server.stats
    assert stats.ok == 96 and not stats.errors and stats.undeliverable == 0


def _serve(serve_process_args, tmp_path: Path, port: int, *extra: str) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    """`rtseg serve` in a subprocess on random-init ESPNet weights saved as an rtseg checkpoint."""
    weights = tmp_path / "espnet_random.pt"
    if not weights.exists():
        net = get_model("espnet")
        save_checkpoint(weights, net.state_dict(), net.meta)
    cmd, env = serve_process_args(weights, f"tcp://127.0.0.1:{port}", *extra)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    line = proc.stdout.readline() if proc.stdout else ""
    if "rtseg serve:" not in line:
        proc.kill()
        raise AssertionError(
            f"rtseg serve did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        )
    return proc


@pytest.mark.slow
def test_load_8_clients_x_200_requests_against_rtseg_serve(
    tmp_path: Path, free_port: Callable[[], int], random_images, serve_process_args
) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    proc = _serve(serve_process_args, tmp_path, port, "--workers", "2", "--interval", "4", "--no-warp")
    try:
        engine = load(get_model("espnet", weights=tmp_path / "espnet_random.pt"), input_size=(64, 48))
        images = random_images(4, (48, 64, 3), seed=11)
        expected = scheduled_labels(engine, images)
        t0 = time.perf_counter()
        # another process computes the labels: allow float summation-order ties, not misrouted replies (~25%)
        latencies = run_load(
            f"tcp://127.0.0.1:{port}",
            images,
            expected,
            clients=8,
            requests=200,
            key_interval=4,
            min_agreement=0.99,
        )
        _report("8 clients x 200 requests, rtseg serve --workers 2", latencies, time.perf_counter() - t0)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "1600 requests, 1600 ok, errors: none" in err


@pytest.mark.data
def test_real_checkpoint_segments_a_camvid_frame(
    espnet_camvid_weights: Path, camvid_root: Path, tcp_endpoint: str
) -> None:
    """The whole path with real weights: PNG in, BGR decode, resize, labels back at input size.
    A channel-order or resize bug would show as a collapse in pixel accuracy (87.7% over the split)."""
    engine = load(get_model("espnet", weights=espnet_camvid_weights))  # 480x360, its training size
    name = "0001TP_008550.png"
    png = (camvid_root / "test" / name).read_bytes()
    truth = cv2.imread(str(camvid_root / "testannot" / name), cv2.IMREAD_GRAYSCALE)
    with Server(engine, bind=tcp_endpoint).start(), Client(tcp_endpoint, timeout=60) as client:
        reply = client.segment(png, encoding="png", size="input", labels="png")
    image = cv2.imread(str(camvid_root / "test" / name))
    np.testing.assert_array_equal(reply.labels, engine.run(image)[0])
    valid = truth < 11
    accuracy = float((reply.labels[valid] == truth[valid]).mean())
    print(f"\nreal ESPNet CamVid via the server, {name}: pixel accuracy {accuracy:.1%}")
    assert accuracy > 0.75
    assert reply.classes.name == "camvid" and reply.input_size == (480, 360)


def test_numpy_frame_index_and_capture_ts_are_sent_as_json_numbers(
    small_engine: Engine, tcp_endpoint: str
) -> None:
    """Client.segment put NumPy scalars into the header as given and failed in the JSON encoder
    (a builtin TypeError; NaN a ValueError)."""
    image = np.zeros((48, 64, 3), np.uint8)
    with Server(small_engine, bind=tcp_endpoint).start(), Client(tcp_endpoint, timeout=10) as client:
        reply = client.segment(image, frame_index=np.int64(7), capture_ts=np.float32(2.5))
        with pytest.raises(ConfigError, match="capture_ts must be finite"):
            client.segment(image, capture_ts=float("nan"))
        with pytest.raises(ConfigError, match="frame_index must be an integer"):
            client.segment(image, frame_index=-1)
    assert reply.frame_index == 7 and reply.header["capture_ts"] == 2.5
