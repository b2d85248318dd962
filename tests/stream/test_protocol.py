"""The rtseg/1 wire format: parts, headers, validation, and messages built by hand from
docs/wire-format.md (with plain pyzmq + json, no rtseg helpers) against the real receivers."""

from __future__ import annotations

import json
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
import zmq

from rtseg.data.labels import CAMVID
from rtseg.errors import ConfigError, InputTypeError
from rtseg.stream import Server, Subscriber
from rtseg.stream.protocol import (
    PROTOCOL,
    ErrorCode,
    FrameHeader,
    PartSpec,
    WireError,
    decode_array,
    decode_frame_header,
    decode_frame_parts,
    encode_array,
    encode_frame_message,
    image_size,
    loads,
    parse_request,
)


def big_png(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG: tiny on the wire, width x height x 3 bytes once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(row * height, 9))
        + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------ parts


@pytest.mark.parametrize("encoding", ["raw", "png"])
@pytest.mark.parametrize("shape", [(48, 64), (48, 64, 3)])
def test_lossless_parts_round_trip_exactly(encoding: str, shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    spec, data = encode_array("labels", array, encoding)
    assert spec == PartSpec("labels", encoding, "uint8", shape)
    back = decode_array(PartSpec.from_dict(json.loads(json.dumps(spec.to_dict()))), data)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_raw_uint16_and_float32_are_little_endian() -> None:
    a16 = np.arange(6, dtype=">u2").reshape(2, 3)  # big-endian input is sent little-endian
    spec, data = encode_array("depth", a16, "raw")
    assert spec.dtype == "uint16" and data == np.arange(6, dtype="<u2").tobytes()
    np.testing.assert_array_equal(decode_array(spec, data), a16)
    f32 = np.linspace(0, 1, 4, dtype=np.float32).reshape(2, 2)
    spec, data = encode_array("conf", f32, "raw")
    np.testing.assert_array_equal(decode_array(spec, data), f32)


def test_jpeg_part_is_close_and_sizes_are_read_from_headers() -> None:
    image = np.full((40, 50, 3), (10, 200, 90), np.uint8)
    spec, data = encode_array("overlay", image, "jpeg", quality=95)
    assert image_size(data, "jpeg") == (50, 40)
    assert np.abs(decode_array(spec, data).astype(int) - image).max() <= 4
    _, png = encode_array("labels", image[..., 0], "png")
    assert image_size(png, "png") == (50, 40)
    progressive = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert image_size(progressive, "jpeg") == (50, 40)


def test_decode_refuses_before_allocating() -> None:
    bomb = big_png(20000, 10000)  # 200 megapixels in ~25 kB
    assert len(bomb) < 100_000
    with pytest.raises(WireError) as err:
        decode_array(PartSpec("image", "png"), bomb, max_pixels=16 * 2**20)
    assert err.value.code is ErrorCode.TOO_LARGE and "200.0 megapixels" in str(err.value)
    with pytest.raises(WireError) as err:
        decode_array(PartSpec("image", "raw", "uint8", (14142, 14143, 3)), b"x", max_pixels=16 * 2**20)
    assert err.value.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize(
    ("spec", "data", "code"),
    [
        (PartSpec("x", "raw", "uint8", (2, 2)), b"abc", ErrorCode.BAD_SHAPE),
        (PartSpec("x", "png"), b"not a png at all, just words", ErrorCode.UNDECODABLE_IMAGE),
        (PartSpec("x", "jpeg"), b"\xff\xd8\xff", ErrorCode.UNDECODABLE_IMAGE),
        (
            PartSpec("x", "png", "uint16"),
            encode_array("x", np.zeros((4, 4), np.uint8), "png")[1],
            ErrorCode.BAD_DTYPE,
        ),
        (
            PartSpec("x", "png", "uint8", (4, 5)),
            encode_array("x", np.zeros((4, 4), np.uint8), "png")[1],
            ErrorCode.BAD_SHAPE,
        ),
    ],
)
def test_decode_errors_have_codes(spec: PartSpec, data: bytes, code: ErrorCode) -> None:
    with pytest.raises(WireError) as err:
        decode_array(spec, data)
    assert err.value.code is code


def test_truncated_images_are_refused() -> None:
    image = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    jpeg = encode_array("i", image, "jpeg")[1]
    png = encode_array("i", image, "png")[1]
    for spec, data in (
        (PartSpec("i", "jpeg"), jpeg[: len(jpeg) // 2]),
        (PartSpec("i", "png"), png[: len(png) // 2]),
    ):
        with pytest.raises(WireError) as err:
            decode_array(spec, data)
        assert err.value.code is ErrorCode.UNDECODABLE_IMAGE


@pytest.mark.parametrize("padding", [1, 4, 14, 15, 16, 64, 4096, 1_000_000])
def test_images_with_trailing_zero_padding_are_read(padding: int) -> None:
    """The doc allows zero padding after the end marker: a JPEG with 15 or more zero bytes was
    refused "truncated (no EOI marker)", a PNG with any "no IEND chunk". The same checks serve the
    server, the subscriber and the client."""
    image = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    labels = (np.arange(48 * 64).reshape(48, 64) % 11).astype(np.uint8)
    jpeg = encode_array("i", image, "jpeg")[1] + bytes(padding)
    png = encode_array("i", image, "png")[1] + bytes(padding)
    assert decode_array(PartSpec("i", "jpeg"), jpeg).shape == (48, 64, 3)
    np.testing.assert_array_equal(decode_array(PartSpec("i", "png"), memoryview(png)), image)
    header = _frame_header(
        image_shape=(48, 64, 3), parts=(PartSpec("labels", "png"), PartSpec("overlay", "jpeg"))
    )
    frames = encode_frame_message(header, [encode_array("labels", labels, "png")[1] + bytes(padding), jpeg])
    parts = decode_frame_parts(decode_frame_header(frames), frames)
    np.testing.assert_array_equal(parts["labels"], labels)


def test_zero_padding_does_not_hide_a_truncated_image() -> None:
    image = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    jpeg = encode_array("i", image, "jpeg")[1]
    png = encode_array("i", image, "png")[1]
    for spec, data, marker in (
        (PartSpec("i", "jpeg"), jpeg[:-2] + bytes(100), "no EOI marker"),
        (PartSpec("i", "png"), png[:-1] + bytes(100), "no IEND chunk"),
        (PartSpec("i", "png"), png + b"garbage" + bytes(100), "no IEND chunk"),
    ):
        with pytest.raises(WireError, match=marker) as err:
            decode_array(spec, data)
        assert err.value.code is ErrorCode.UNDECODABLE_IMAGE


# ------------------------------------------------------------------ headers


def _frame_header(**changes: object) -> FrameHeader:
    fields: dict = dict(
        stream="cam0",
        seq=3,
        frame_index=9,
        capture_ts=1.5,
        publish_ts=2.5,
        is_keyframe=False,
        deep_age=2,
        image_shape=(4, 6, 3),
        parts=(PartSpec("labels", "raw", "uint8", (4, 6)),),
        timings_ms={"low": 1.0},
        classes=CAMVID,
    )
    fields.update(changes)
    return FrameHeader(**fields)


def test_frame_message_round_trip() -> None:
    labels = np.arange(24, dtype=np.uint8).reshape(4, 6) % 11
    header = _frame_header()
    frames = encode_frame_message(header, [labels.tobytes()])
    assert frames[0] == b"cam0"
    back = decode_frame_header(frames)
    assert back == header
    np.testing.assert_array_equal(decode_frame_parts(back, frames)["labels"], labels)


def test_session_is_optional_and_round_trips() -> None:
    """A restart is a new ``session``; a header without one (another implementation) stays valid."""
    labels = np.zeros((4, 6), np.uint8)
    with_session = _frame_header(session="3f2a9c01d4e5b6a7")
    back = decode_frame_header(encode_frame_message(with_session, [labels.tobytes()]))
    assert back.session == "3f2a9c01d4e5b6a7" and back == with_session
    assert "session" not in _frame_header().to_dict()
    assert decode_frame_header(encode_frame_message(_frame_header(), [labels.tobytes()])).session is None


@pytest.mark.parametrize(
    ("part", "array"),
    [
        (PartSpec("labels", "raw", "uint16", (4, 6)), np.zeros((4, 6), np.uint16)),
        (PartSpec("labels", "raw", "uint8", (4, 6, 3)), np.zeros((4, 6, 3), np.uint8)),
        (PartSpec("overlay", "raw", "float32", (4, 6, 3)), np.zeros((4, 6, 3), np.float32)),
        (PartSpec("overlay", "raw", "uint8", (4, 6)), np.zeros((4, 6), np.uint8)),
        (PartSpec("frame", "raw", "uint8", (4, 6, 4)), np.zeros((4, 6, 4), np.uint8)),
    ],
)
def test_standard_parts_must_be_drawable(part: PartSpec, array: np.ndarray) -> None:
    """A viewer draws labels, overlay and frame as they come: a wrong type is malformed, not a crash."""
    header = _frame_header(parts=(part,))
    with pytest.raises(WireError, match=f"part '{part.name}'") as err:
        decode_frame_parts(header, encode_frame_message(header, [array.tobytes()]))
    assert err.value.code is ErrorCode.BAD_SHAPE


def test_image_shape_is_metadata_not_held_to_the_pixel_limit() -> None:
    """A 1.6-gigapixel source's 4x6 labels are read (only decoded parts meet the limit); a shape
    without a width, or with a side past int64, is malformed."""
    labels = np.zeros((4, 6), np.uint8)
    header = _frame_header(image_shape=(40_000, 40_000, 3))
    frames = encode_frame_message(header, [labels.tobytes()])
    assert decode_frame_header(frames, max_pixels=100).image_shape == (40_000, 40_000, 3)
    assert decode_frame_parts(header, frames, max_pixels=100)["labels"].shape == (4, 6)
    for shape, code in (((48,), ErrorCode.BAD_HEADER), ((2**63, 1, 3), ErrorCode.BAD_SHAPE)):
        header = _frame_header(image_shape=shape)
        with pytest.raises(WireError) as err:
            decode_frame_header(encode_frame_message(header, [labels.tobytes()]))
        assert err.value.code is code
    big = _frame_header(parts=(PartSpec("labels", "raw", "uint8", (40, 60)),))
    with pytest.raises(WireError, match="part 'labels'") as err:  # a decoded part still is
        decode_frame_header(encode_frame_message(big, [bytes(2400)]), max_pixels=100)
    assert err.value.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda d: d.update(proto="rtseg/2"), ErrorCode.UNSUPPORTED_VERSION),
        (lambda d: d.pop("proto"), ErrorCode.BAD_HEADER),
        (lambda d: d.update(seq=-1), ErrorCode.BAD_HEADER),
        (lambda d: d.update(seq=True), ErrorCode.BAD_HEADER),
        (lambda d: d.update(seq=10**30), ErrorCode.BAD_HEADER),  # past int64: gap counts meaningless
        (lambda d: d.update(frame_index=2**63), ErrorCode.BAD_HEADER),
        (lambda d: d.update(capture_ts="now"), ErrorCode.BAD_HEADER),
        (lambda d: d.update(stream="has space"), ErrorCode.BAD_HEADER),
        (lambda d: d.update(image_shape=[4, -6, 3]), ErrorCode.BAD_SHAPE),
        (lambda d: d["parts"][0].update(dtype="int7"), ErrorCode.BAD_DTYPE),
        (lambda d: d["parts"][0].pop("shape"), ErrorCode.BAD_SHAPE),
        (lambda d: d["parts"][0].pop("dtype"), ErrorCode.BAD_HEADER),  # was taken as uint8
        (lambda d: d.update(classes={"name": "x"}), ErrorCode.BAD_HEADER),
        # Infinity is not JSON (Python's json read it, and int() of it overflowed)
        (lambda d: d["classes"].update(ignore_index=float("inf")), ErrorCode.BAD_JSON),
        (lambda d: d.update(capture_ts=float("nan")), ErrorCode.BAD_JSON),
        (lambda d: d.update(timings_ms={"low": "fast"}), ErrorCode.BAD_HEADER),
        # the publisher's session id: what subscribers tell a restart by
        (lambda d: d.update(session=""), ErrorCode.BAD_HEADER),
        (lambda d: d.update(session=7), ErrorCode.BAD_HEADER),
        (lambda d: d.update(session="x" * 65), ErrorCode.BAD_HEADER),
    ],
)
def test_frame_header_validation(mutate, code: ErrorCode) -> None:  # type: ignore[no-untyped-def]
    data = _frame_header().to_dict()
    mutate(data)
    with pytest.raises(WireError) as err:
        decode_frame_header([b"cam0", json.dumps(data).encode(), b"\0" * 24])
    assert err.value.code is code


def test_loads_refuses_bad_json_and_oversized_headers() -> None:
    for frame, code in (
        (b"\xff\xfe", ErrorCode.BAD_JSON),
        (b"[1, 2]", ErrorCode.BAD_JSON),
        (b"[" * 100_000, ErrorCode.TOO_LARGE),
        (b"[" * 60_000 + b"]" * 60_000, ErrorCode.TOO_LARGE),
        (b"[" * 30_000 + b"]" * 30_000, ErrorCode.BAD_JSON),  # nesting deeper than the parser allows
    ):
        with pytest.raises(WireError) as err:
            loads(frame)
        assert err.value.code is code


def test_request_validation() -> None:
    good = {
        "proto": PROTOCOL,
        "type": "segment",
        "id": 5,
        "image": {"name": "image", "encoding": "jpeg", "dtype": "uint8"},
    }
    request = parse_request(good)
    assert (request.id, request.stream, request.labels, request.size, request.overlay) == (
        5,
        None,
        "png",
        "output",
        False,
    )
    for change, code in (
        ({"start": True}, ErrorCode.BAD_HEADER),  # start without a stream
        ({"id": [1]}, ErrorCode.BAD_HEADER),
        ({"reply": {"labels": "jpeg"}}, ErrorCode.BAD_HEADER),
        ({"reply": {"overlay_quality": 101}}, ErrorCode.BAD_HEADER),
        ({"image": {"name": "image", "encoding": "raw", "dtype": "uint8"}}, ErrorCode.BAD_SHAPE),
        # what docs/wire-format.md's error table says of each descriptor field: a missing dtype
        # was taken as uint8; shapes of floats or booleans are bad_shape as any malformed shape
        ({"image": {"name": "image", "encoding": "png"}}, ErrorCode.BAD_HEADER),
        ({"image": {"name": "image", "encoding": "png", "dtype": None}}, ErrorCode.BAD_HEADER),
        ({"image": {"name": "image", "encoding": "raw", "shape": [2, 4, 3]}}, ErrorCode.BAD_HEADER),
        ({"image": {"name": "image", "encoding": "png", "dtype": "int8"}}, ErrorCode.BAD_DTYPE),
        (
            {"image": {"name": "image", "encoding": "raw", "dtype": "uint8", "shape": [2.0, 4, 3]}},
            ErrorCode.BAD_SHAPE,
        ),
        (
            {"image": {"name": "image", "encoding": "raw", "dtype": "uint8", "shape": [2, 4, True]}},
            ErrorCode.BAD_SHAPE,
        ),
        (
            {"image": {"name": "image", "encoding": "raw", "dtype": "uint8", "shape": [2**63, 1, 3]}},
            ErrorCode.BAD_SHAPE,
        ),
        (
            {"image": {"name": "image", "encoding": "raw", "dtype": "uint8", "shape": "2x4x3"}},
            ErrorCode.BAD_SHAPE,
        ),
        ({"image": {"name": "image", "encoding": "gif"}}, ErrorCode.BAD_HEADER),
        ({"capture_ts": float("nan")}, ErrorCode.BAD_HEADER),
        # an integer past float's range raised OverflowError: internal_error, logged as a server bug
        ({"capture_ts": 10**400}, ErrorCode.BAD_HEADER),
        ({"deadline_ms": -(10**400)}, ErrorCode.BAD_HEADER),
    ):
        with pytest.raises(WireError) as err:
            parse_request({**good, **change})
        assert err.value.code is code, change


def test_null_optional_fields_are_absent_ones() -> None:
    """ "reply": null was refused ("expected an object") while null is absent for every other
    optional field, in the request and in the reply object."""
    header = {
        "proto": PROTOCOL,
        "type": "segment",
        "image": {"name": "image", "encoding": "jpeg", "dtype": "uint8"},
    }
    default = parse_request(header)
    nulls = ("id", "stream", "start", "keyframe", "frame_index", "capture_ts", "deadline_ms", "reply")
    for name in nulls:
        assert parse_request({**header, name: None}) == default, name
    for name in ("labels", "size", "overlay", "overlay_quality"):
        assert parse_request({**header, "reply": {name: None}}) == default, name
    with pytest.raises(WireError, match="field 'reply': expected an object") as err:
        parse_request({**header, "reply": []})
    assert err.value.code is ErrorCode.BAD_HEADER


@pytest.mark.parametrize("quality", [0, 50.5, 101, -1, True, "80", 2**64])
def test_overlay_quality_has_one_check_one_name_one_range(quality: object) -> None:
    """It was two: 0 or 50.5 said field 'overlay_quality' in 1..2**63-1, 101 'reply.overlay_quality'
    in 1..100."""
    header = {
        "proto": PROTOCOL,
        "type": "segment",
        "image": {"name": "image", "encoding": "jpeg", "dtype": "uint8"},
    }
    with pytest.raises(WireError) as err:
        parse_request({**header, "reply": {"overlay_quality": quality}})
    assert err.value.code is ErrorCode.BAD_HEADER
    assert (
        err.value.detail == f"field 'reply.overlay_quality': expected an integer in 1..100, got {quality!r}"
    )
    for good in (1, 100):
        assert parse_request({**header, "reply": {"overlay_quality": good}}).overlay_quality == good


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        ({"labels": "jpeg"}, "field 'reply.labels': expected one of ['png', 'raw'], got 'jpeg'"),
        ({"size": "half"}, "field 'reply.size': expected one of ['output', 'input'], got 'half'"),
        ({"overlay": "yes"}, "field 'reply.overlay': expected true or false, got 'yes'"),
    ],
)
def test_reply_fields_are_named_with_their_object(reply: dict, detail: str) -> None:
    """They were named 'labels', 'size' and 'overlay', as if top-level (and 'labels' is also a part
    name), while overlay_quality said 'reply.overlay_quality'."""
    header = {
        "proto": PROTOCOL,
        "type": "segment",
        "image": {"name": "image", "encoding": "jpeg", "dtype": "uint8"},
    }
    with pytest.raises(WireError) as err:
        parse_request({**header, "reply": reply})
    assert err.value.code is ErrorCode.BAD_HEADER and err.value.detail == detail


def test_encode_array_refuses_sides_its_encoder_cannot_write() -> None:
    """A clear ValueError naming the limit, not OpenCV's assertion (PNG) or a bare failure (JPEG)."""
    encode_array("overlay", np.zeros((1, 65500, 3), np.uint8), "jpeg")
    with pytest.raises(
        ValueError, match="part 'overlay': jpeg holds at most 65500 pixels a side, the image is 1x65501"
    ):
        encode_array("overlay", np.zeros((65501, 1, 3), np.uint8), "jpeg")
    with pytest.raises(ValueError, match="part 'labels': png holds at most 1000000 pixels a side"):
        encode_array("labels", np.zeros((1, 1_000_001), np.uint8), "png")
    assert encode_array("labels", np.zeros((1, 1_000_001), np.uint8), "raw")[0].shape == (1, 1_000_001)


# ------------------------------------------------------------------ hand-built from docs/wire-format.md


def test_hand_built_published_message_is_received(tcp_endpoint: str) -> None:
    """Section 1 of the spec, written with pyzmq and json only."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(tcp_endpoint)
    labels = (np.arange(360 * 480, dtype=np.uint32).reshape(360, 480) // 4801 % 11).astype(np.uint8)
    png = cv2.imencode(".png", labels)[1].tobytes()
    header = {
        "proto": "rtseg/1",
        "type": "frame",
        "stream": "cam0",
        "seq": 0,
        "frame_index": 120,
        "capture_ts": 1718000000.125,
        "publish_ts": 1718000000.160,
        "is_keyframe": False,
        "deep_age": 2,
        "timings_ms": {"low": 4.1, "head": 6.3},
        "image_shape": [360, 480, 3],
        "parts": [{"name": "labels", "encoding": "png", "dtype": "uint8", "shape": [360, 480]}],
        "classes": {
            "name": "camvid",
            "names": list(CAMVID.names),
            "palette": [list(c) for c in CAMVID.palette],
            "ignore_index": 255,
        },
        "future_field": "ignored by rtseg/1 receivers",
    }
    try:
        with Subscriber(tcp_endpoint, topics=["cam0"]) as sub:
            deadline = time.monotonic() + 5
            while True:  # PUB/SUB joins asynchronously: publish until the subscription is in place
                pub.send_multipart([b"cam0", json.dumps(header).encode("utf-8"), png])
                try:
                    message = sub.recv(timeout=0.1)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, "the hand-built message never arrived"
            assert sub.stats.malformed == 0
    finally:
        pub.close(linger=0)
        ctx.term()
    assert message.header.frame_index == 120 and message.header.deep_age == 2
    assert message.header.timings_ms == {"low": 4.1, "head": 6.3}
    assert message.classes == CAMVID
    np.testing.assert_array_equal(message.labels, labels)


def test_hand_built_request_gets_a_hand_readable_reply(small_engine, tcp_endpoint: str) -> None:  # type: ignore[no-untyped-def]
    """Section 2 of the spec: the documented raw 2x4 example over a plain REQ socket."""
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3) * 10
    header = {
        "proto": "rtseg/1",
        "type": "segment",
        "id": 1,
        "image": {"name": "image", "encoding": "raw", "dtype": "uint8", "shape": [2, 4, 3]},
        "reply": {"labels": "raw", "size": "input"},
    }
    with Server(small_engine, bind=tcp_endpoint).start():
        ctx = zmq.Context()
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(tcp_endpoint)
        try:
            req.send_multipart([json.dumps(header).encode("utf-8"), image.tobytes()])
            assert req.poll(10_000), "no reply"
            frames = req.recv_multipart()
            req.send_multipart([b'{"proto": "rtseg/1", "type": "segment", "id": "x"}', b""])
            assert req.poll(10_000), "no reply"
            error_frames = req.recv_multipart()
        finally:
            req.close(linger=0)
            ctx.term()
    reply = json.loads(frames[0].decode("utf-8"))
    assert reply["proto"] == "rtseg/1" and reply["type"] == "segment_reply"
    assert reply["status"] == "ok" and reply["id"] == 1 and reply["is_keyframe"] is True
    assert reply["parts"] == [{"name": "labels", "encoding": "raw", "dtype": "uint8", "shape": [2, 4]}]
    assert reply["image_shape"] == [2, 4, 3] and reply["input_size"] == [64, 48]
    assert len(frames) == 2 and len(frames[1]) == 8
    # the same image through the engine, resized as the spec says (bilinear in, nearest out)
    up = cv2.resize(image, (64, 48), interpolation=cv2.INTER_LINEAR)
    expected = cv2.resize(small_engine.run(up)[0], (4, 2), interpolation=cv2.INTER_NEAREST_EXACT)
    np.testing.assert_array_equal(np.frombuffer(frames[1], np.uint8).reshape(2, 4), expected)
    error = json.loads(error_frames[0])
    assert len(error_frames) == 1 and error["status"] == "error" and error["id"] == "x"
    assert error["error"]["code"] == "bad_header" and "image" in error["error"]["message"]
    assert error["timings_ms"]["total"] >= error["timings_ms"]["queue"] >= 0


@pytest.mark.parametrize("field_name", ["capture_ts", "publish_ts", "timings_ms"])
def test_a_published_number_past_floats_range_is_named_as_a_bad_field(field_name: str) -> None:
    """It was an OverflowError ('int too large to convert to float') that named no field."""
    header = _frame_header().to_dict()
    header[field_name] = {"low": 10**400} if field_name == "timings_ms" else 10**400
    with pytest.raises(WireError) as err:
        FrameHeader.from_dict(header)
    assert err.value.code is ErrorCode.BAD_HEADER and f"field {field_name!r}" in err.value.detail


def test_encode_array_refuses_what_it_cannot_send_with_rtseg_errors() -> None:
    """A list raised AttributeError (no .dtype), a float32 JPEG a bare ValueError, quality "80" a
    TypeError: InputTypeError and ConfigError (still a ValueError), naming the part."""
    with pytest.raises(InputTypeError, match="part 'image' must be a NumPy array, got list"):
        encode_array("image", [[0]], "png")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="part 'overlay': JPEG holds uint8, got float32"):
        encode_array("overlay", np.zeros((4, 4, 3), np.float32), "jpeg")
    with pytest.raises(ConfigError, match=r"quality must be an integer in 1\.\.100, got '80' \(str\)"):
        encode_array("overlay", np.zeros((4, 4, 3), np.uint8), "jpeg", quality="80")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"part 'x': dtype complex64 cannot be sent"):
        encode_array("x", np.zeros((2, 2), np.complex64), "raw")
