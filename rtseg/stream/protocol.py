"""The rtseg/1 wire format: a JSON header frame plus binary part frames, specified in docs/wire-format.md.

Everything a peer sends is validated here before any of it is used, and every failure is a
``WireError`` carrying one of the documented ``ErrorCode`` values, so the server can answer it and
the subscriber can count it instead of crashing. Image dimensions are read from PNG and JPEG headers
before decoding, so a small file that claims a huge image is refused without allocating it.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import cv2
import numpy as np
import zmq

from ..data.labels import ClassSet
from ..errors import ConfigError, InputTypeError, ProtocolError, RtsegError

PROTOCOL = "rtseg/1"
ENCODINGS = ("jpeg", "png", "raw")
# What a receiver records for a part of a name it does not know, in an encoding or dtype rtseg/1
# does not have (a later publisher's addition): the part is skipped, the message still read.
UNKNOWN_ENCODING = "unknown"
KNOWN_PARTS = ("labels", "overlay", "frame", "image")
# Raw parts are C-order and little-endian; the dtype names are the wire names.
DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "float32": np.dtype("<f4"),
}
MAX_HEADER_BYTES = 64 * 1024
MAX_ID_CHARS = 128
MAX_PARTS = 16  # part frames in one message: a header's parts list is at most this long
DEFAULT_MAX_PIXELS = 16 * 1024 * 1024
# The widest or tallest image each encoder writes: JPEG's frame header holds 65,535 but libjpeg
# refuses more than 65,500 (JPEG_MAX_DIMENSION); libpng refuses more than its default user limit
# of 1,000,000 (PNG_USER_WIDTH_MAX/HEIGHT_MAX), which OpenCV keeps. Raw parts have no limit.
MAX_SIDE = {"jpeg": 65_500, "png": 1_000_000}
_STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")


class ErrorCode(str, Enum):
    """Why the server refused a request; the ``error.code`` string of an error reply."""

    MALFORMED_MULTIPART = "malformed_multipart"
    BAD_JSON = "bad_json"
    UNSUPPORTED_VERSION = "unsupported_version"
    BAD_HEADER = "bad_header"
    BAD_DTYPE = "bad_dtype"
    BAD_SHAPE = "bad_shape"
    UNDECODABLE_IMAGE = "undecodable_image"
    TOO_LARGE = "too_large"
    UNKNOWN_STREAM = "unknown_stream"
    BUSY = "busy"
    EXPIRED = "expired"
    INTERNAL_ERROR = "internal_error"


class WireError(ProtocolError):
    """A message broke the wire format; ``code`` says how."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.detail = message


class ServerError(RtsegError):
    """The server answered with an error reply; ``code`` is one of ``ErrorCode``'s values."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"server refused the request ({code}): {message}")
        self.code = code
        self.detail = message


# --------------------------------------------------------------------------- field validation


def _bad(field_name: str, expected: str, value: Any) -> WireError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return WireError(ErrorCode.BAD_HEADER, f"field {field_name!r}: expected {expected}, got {shown}")


def _get(data: Mapping[str, Any], name: str, *, required: bool, path: str | None = None) -> Any:
    """``data[name]``; ``path`` is how errors name it (``reply.labels`` for a nested field)."""
    if name not in data or data[name] is None:
        if required:
            raise WireError(ErrorCode.BAD_HEADER, f"field {path or name!r} is missing")
        return None
    return data[name]


INT_MAX = 2**63 - 1  # every integer field fits an int64, what a C or C++ peer holds it in
# The largest value of an int socket option (ZMQ_SNDHWM, ZMQ_RCVHWM); ZMQ_MAXMSGSIZE is an int64
# (INT_MAX). Larger values made setsockopt raise OverflowError after the model had loaded.
SOCKOPT_INT_MAX = 2**31 - 1
_BOUND_TEXT = {SOCKOPT_INT_MAX: "2**31-1", INT_MAX: "2**63-1"}


def check_int_option(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    """ConfigError naming the option ``name`` unless ``value`` is an integer (a NumPy one too; not
    a bool) in ``minimum..maximum`` (no upper bound when None). A string such as "80" is refused
    here by name: compared with a bound, it raised a bare TypeError."""
    bound = f">= {minimum}" if maximum is None else f"in {minimum}..{_BOUND_TEXT.get(maximum, maximum)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer {bound}, got {value!r} ({type(value).__name__})")
    if value < minimum or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} must be an integer {bound}, got {value!r}")


def _int(data: Mapping[str, Any], name: str, *, required: bool = True, minimum: int = 0) -> int | None:
    value = _get(data, name, required=required)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= INT_MAX:
        raise _bad(name, f"an integer in {minimum}..2**63-1", value)
    return value


def _is_finite_number(value: Any) -> bool:
    """A JSON number a float holds: a sender's integer past 1e308 overflowed math.isfinite into an
    OverflowError, answered as the server's own failure (internal_error, with a traceback)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _float(data: Mapping[str, Any], name: str, *, required: bool = True) -> float | None:
    value = _get(data, name, required=required)
    if value is None:
        return None
    if not _is_finite_number(value):
        raise _bad(name, "a finite number", value)
    return float(value)


def _bool(
    data: Mapping[str, Any], name: str, *, default: bool | None = None, path: str | None = None
) -> bool:
    value = _get(data, name, required=default is None, path=path)
    if value is None:
        return bool(default)
    if not isinstance(value, bool):
        raise _bad(path or name, "true or false", value)
    return value


def _choice(
    data: Mapping[str, Any],
    name: str,
    choices: Sequence[str],
    default: str | None = None,
    *,
    path: str | None = None,
) -> str:
    value = _get(data, name, required=default is None, path=path)
    if value is None:
        return str(default)
    if value not in choices:
        raise _bad(path or name, f"one of {list(choices)}", value)
    return str(value)


def _shape(value: Any, name: str) -> tuple[int, ...]:
    """1..4 positive integers, each an int64 as every header integer (``image_shape`` is not held
    to the pixel limit, and its sides still have to be numbers a receiver can compute with)."""
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= 4
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= INT_MAX for v in value)
    ):
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise WireError(
            ErrorCode.BAD_SHAPE, f"{name}: expected a list of 1..4 integers in 1..2**63-1, got {shown}"
        )
    return tuple(value)


STREAM_ID_RULE = "1..64 characters of [A-Za-z0-9._:/-] starting with a letter or digit"


def is_stream_id(value: Any) -> bool:
    return isinstance(value, str) and _STREAM_ID.fullmatch(value) is not None


def check_stream_id(value: Any, name: str = "stream") -> str:
    if not is_stream_id(value):
        raise _bad(name, STREAM_ID_RULE, value)
    return value


def _timings(data: Mapping[str, Any], name: str = "timings_ms") -> dict[str, float]:
    value = _get(data, name, required=False)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and _is_finite_number(v) for k, v in value.items()
    ):
        raise _bad(name, "an object of stage name -> milliseconds", value)
    return {k: float(v) for k, v in value.items()}


def _classes(data: Mapping[str, Any]) -> ClassSet | None:
    value = _get(data, "classes", required=False)
    if value is None:
        return None
    try:
        return ClassSet.from_dict(value)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(Infinity)
        raise _bad("classes", f"a class set {{name, names, palette}} ({exc})", value) from None


def dumps(header: Mapping[str, Any]) -> bytes:
    """Compact strict JSON (no NaN): what every header frame holds."""
    return json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")


def loads(frame: bytes | memoryview, *, expect_type: str | None = None) -> dict[str, Any]:
    """Parse and version-check one header frame."""
    return check_protocol(load_json_object(frame), expect_type=expect_type)


def _refuse_constant(name: str) -> Any:
    """Python's json reads NaN, Infinity and -Infinity, which JSON does not have (the wire format's
    JSON is strict): a header holding one is not JSON, whichever field it is in."""
    raise ValueError(f"{name} is not a JSON value; the wire format's JSON is strict (no NaN or Infinity)")


def load_json_object(frame: bytes | memoryview) -> dict[str, Any]:
    """The header frame as a JSON object, not yet version-checked (so that a reply can echo its id)."""
    if len(frame) > MAX_HEADER_BYTES:
        raise WireError(ErrorCode.TOO_LARGE, f"header is {len(frame)} bytes; the limit is {MAX_HEADER_BYTES}")
    try:
        data = json.loads(bytes(frame).decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(ErrorCode.BAD_JSON, f"the header frame is not UTF-8 JSON ({exc})") from None
    if not isinstance(data, dict):
        raise WireError(ErrorCode.BAD_JSON, f"the header must be a JSON object, got {type(data).__name__}")
    return data


def check_protocol(data: dict[str, Any], *, expect_type: str | None = None) -> dict[str, Any]:
    proto = data.get("proto")
    if proto != PROTOCOL:
        if isinstance(proto, str) and proto.startswith("rtseg/"):
            raise WireError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"protocol {proto!r} is not supported; this peer speaks {PROTOCOL}",
            )
        raise _bad("proto", repr(PROTOCOL), proto)
    if expect_type is not None and data.get("type") != expect_type:
        raise _bad("type", repr(expect_type), data.get("type"))
    return data


# --------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class PartSpec:
    """How one binary frame is encoded. ``shape`` is required for raw, informative for PNG/JPEG."""

    name: str
    encoding: str
    dtype: str = "uint8"
    shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"PartSpec.name must be a non-empty string, got {self.name!r}")
        if self.encoding == UNKNOWN_ENCODING:
            return  # a part to skip (``PartSpec.received``): nothing about it is known
        if self.encoding not in ENCODINGS:
            raise ValueError(f"PartSpec.encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"PartSpec.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.encoding == "raw" and self.shape is None:
            raise ValueError(f"PartSpec {self.name!r}: a raw part needs a shape")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "encoding": self.encoding, "dtype": self.dtype}
        if self.shape is not None:
            out["shape"] = list(self.shape)
        return out

    @property
    def skipped(self) -> bool:
        return self.encoding == UNKNOWN_ENCODING

    @classmethod
    def received(cls, data: Any, where: str = "parts[]") -> PartSpec:
        """``from_dict`` for a receiver: a part of a name rtseg/1 does not know whose encoding or
        dtype it does not know either is a later addition to skip ("ignore unknown part names"),
        not a reason to refuse the message and its labels."""
        try:
            return cls.from_dict(data, where)
        except WireError:
            name = data.get("name") if isinstance(data, dict) else None
            if not isinstance(name, str) or not name or len(name) > 64 or name in KNOWN_PARTS:
                raise
            return cls(name, UNKNOWN_ENCODING)

    @classmethod
    def from_dict(cls, data: Any, where: str = "parts[]") -> PartSpec:
        if not isinstance(data, dict):
            raise _bad(where, "an object {name, encoding, dtype, shape}", data)
        name = data.get("name")
        if not isinstance(name, str) or not name or len(name) > 64:
            raise _bad(f"{where}.name", "a non-empty string of at most 64 characters", name)
        encoding = _choice(data, "encoding", ENCODINGS)
        # Required, as docs/wire-format.md's descriptor says: a missing one was taken as uint8.
        dtype = _get(data, "dtype", required=True, path=f"{where}.dtype")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise WireError(
                ErrorCode.BAD_DTYPE, f"{where}.dtype: expected one of {list(DTYPES)}, got {dtype!r}"
            )
        raw_shape = data.get("shape")
        if raw_shape is None and encoding == "raw":
            raise WireError(ErrorCode.BAD_SHAPE, f'{where}: a raw part needs "shape"')
        shape = None if raw_shape is None else _shape(raw_shape, f"{where}.shape")
        return cls(name, encoding, dtype, shape)


def _be16(data: bytes | memoryview, i: int) -> int:
    return struct.unpack(">H", bytes(data[i : i + 2]))[0]


_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def image_size(data: bytes | memoryview, encoding: str) -> tuple[int, int]:
    """(width, height) from a PNG IHDR or JPEG SOF header, without decoding the pixels."""
    if encoding == "png":
        if len(data) < 24 or bytes(data[:8]) != b"\x89PNG\r\n\x1a\n" or bytes(data[12:16]) != b"IHDR":
            raise WireError(
                ErrorCode.UNDECODABLE_IMAGE, "the bytes are not a PNG file (no PNG signature/IHDR)"
            )
        w, h = struct.unpack(">II", bytes(data[16:24]))
        return w, h
    if encoding == "jpeg":
        if len(data) < 4 or bytes(data[:2]) != b"\xff\xd8":
            raise WireError(ErrorCode.UNDECODABLE_IMAGE, "the bytes are not a JPEG file (no SOI marker)")
        i, n = 2, len(data)
        while i + 4 <= n:
            if data[i] != 0xFF:
                break
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
                i += 2
                continue
            if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
                break
            length = _be16(data, i + 2)
            if marker in _SOF_MARKERS and i + 9 <= n:
                return _be16(data, i + 7), _be16(data, i + 5)
            i += 2 + length
        raise WireError(
            ErrorCode.UNDECODABLE_IMAGE, "the JPEG has no readable frame header (truncated or corrupt)"
        )
    raise ValueError(f"image_size: encoding must be png or jpeg, got {encoding!r}")


def encode_array(name: str, array: np.ndarray, encoding: str, *, quality: int = 90) -> tuple[PartSpec, bytes]:
    """One array -> (its descriptor, its frame bytes). What cannot be sent is refused naming the
    part: InputTypeError for no NumPy array, ConfigError (a ValueError) for a dtype, shape or
    size the encoding cannot hold (a float32 overlay raised a bare ValueError from Publisher.publish)."""
    if not isinstance(array, np.ndarray):
        raise InputTypeError(f"part {name!r} must be a NumPy array, got {type(array).__name__}")
    dtype = next((k for k, v in DTYPES.items() if v == array.dtype.newbyteorder("<")), None)
    if dtype is None:
        raise ConfigError(f"part {name!r}: dtype {array.dtype} cannot be sent; use one of {tuple(DTYPES)}")
    spec = PartSpec(name, encoding, dtype, tuple(int(s) for s in array.shape))
    if encoding == "raw":
        return spec, np.ascontiguousarray(array, dtype=DTYPES[dtype]).tobytes()
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
        raise ConfigError(f"part {name!r}: {encoding} needs an HxW or HxWx3 array, got shape {array.shape}")
    try:
        check_encodable(array.shape, encoding, f"part {name!r}")
    except WireError as exc:
        raise ConfigError(exc.detail) from None
    if encoding == "png":
        if dtype not in ("uint8", "uint16"):
            raise ConfigError(f"part {name!r}: PNG holds uint8 or uint16, got {dtype}")
        ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        if dtype != "uint8":
            raise ConfigError(f"part {name!r}: JPEG holds uint8, got {dtype}")
        check_int_option("quality", quality, 1, 100)
        ok, buf = cv2.imencode(".jpg", array, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ConfigError(
            f"part {name!r}: OpenCV could not encode a {array.shape} {dtype} array as {encoding}"
        )
    return spec, buf.tobytes()


def check_encodable(shape: tuple[int, ...], encoding: str, what: str) -> None:
    """WireError ``too_large`` when an image of ``shape`` is wider or taller than ``encoding``
    can hold (see ``MAX_SIDE``): refused before the work that would produce it, not as an encoder
    failure after it."""
    limit = MAX_SIDE.get(encoding)
    if limit is None or len(shape) < 2:
        return
    h, w = shape[:2]
    if max(h, w) > limit:
        raise WireError(
            ErrorCode.TOO_LARGE,
            f"{what}: {encoding} holds at most {limit} pixels a side, the image is {w}x{h} (WxH)",
        )


def check_pixels(shape: tuple[int, ...], max_pixels: int, what: str) -> None:
    pixels = shape[0] * (shape[1] if len(shape) > 1 else 1)
    if pixels > max_pixels:
        raise WireError(
            ErrorCode.TOO_LARGE,
            f"{what} is {pixels / 1e6:.1f} megapixels ({'x'.join(map(str, shape))}); "
            f"the limit is {max_pixels / 1e6:.1f}",
        )


def check_part(spec: PartSpec, data: bytes | memoryview, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """The checks that need no decoding: a raw part's byte count; an image's signature, size in its
    header, and end marker (a truncated one). Microseconds, so a receiver can run them on every
    message, including those it will never decode."""
    if spec.skipped:
        return
    if spec.encoding == "raw":
        shape = spec.shape if spec.shape is not None else ()  # PartSpec requires a shape for raw
        check_pixels(shape, max_pixels, f"part {spec.name!r}")
        expected = math.prod(shape) * DTYPES[spec.dtype].itemsize
        if len(data) != expected:
            raise WireError(
                ErrorCode.BAD_SHAPE,
                f"part {spec.name!r}: shape {list(shape)} of {spec.dtype} needs {expected} bytes, "
                f"the frame has {len(data)}",
            )
        return
    w, h = image_size(data, spec.encoding)
    check_pixels((h, w), max_pixels, f"part {spec.name!r}")
    end = unpadded_length(data)  # the file ends before any trailing zero padding
    if spec.encoding == "png" and bytes(data[max(0, end - 12) : end]) != _PNG_IEND:
        raise WireError(
            ErrorCode.UNDECODABLE_IMAGE, f"part {spec.name!r}: the PNG is truncated (no IEND chunk)"
        )
    if spec.encoding == "jpeg" and bytes(data[max(0, end - 2) : end]) != b"\xff\xd9":
        raise WireError(
            ErrorCode.UNDECODABLE_IMAGE, f"part {spec.name!r}: the JPEG is truncated (no EOI marker)"
        )


def unpadded_length(data: bytes | memoryview) -> int:
    """The length of ``data`` without its trailing zero bytes (the padding the wire format allows
    after a PNG's IEND or a JPEG's EOI; both end markers end in a non-zero byte). Scans from the end
    in growing windows over the buffer itself: no copy of a multi-MB part per message, and only
    as many bytes as there is padding (plus one window) are looked at."""
    view = np.frombuffer(data, dtype=np.uint8)
    end, window = len(view), 64
    while end > 0:
        start = max(0, end - window)
        nonzero = np.flatnonzero(view[start:end])
        if nonzero.size:
            return start + int(nonzero[-1]) + 1
        end, window = start, min(window * 4, 1 << 20)
    return 0


def decode_array(
    spec: PartSpec, data: bytes | memoryview, *, max_pixels: int = DEFAULT_MAX_PIXELS, copy: bool = True
) -> np.ndarray:
    """Frame bytes -> array, checked against the descriptor and the pixel limit before decoding."""
    check_part(spec, data, max_pixels=max_pixels)
    if spec.encoding == "raw":
        array = np.frombuffer(data, dtype=DTYPES[spec.dtype]).reshape(spec.shape or ())
        return array.copy() if copy else array
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise WireError(
            ErrorCode.UNDECODABLE_IMAGE, f"part {spec.name!r}: the {spec.encoding} bytes cannot be decoded"
        )
    if array.dtype != DTYPES[spec.dtype]:
        raise WireError(
            ErrorCode.BAD_DTYPE, f"part {spec.name!r}: declared {spec.dtype}, the image holds {array.dtype}"
        )
    if spec.shape is not None and tuple(array.shape) != spec.shape:
        raise WireError(
            ErrorCode.BAD_SHAPE,
            f"part {spec.name!r}: declared shape {list(spec.shape)}, the image is {list(array.shape)}",
        )
    return array


# --------------------------------------------------------------------------- stream messages


@dataclass(frozen=True)
class FrameHeader:
    """The header of one published result (message type ``frame``)."""

    stream: str
    seq: int
    frame_index: int
    capture_ts: float
    publish_ts: float
    is_keyframe: bool
    deep_age: int
    image_shape: tuple[int, ...]
    parts: tuple[PartSpec, ...]
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    classes: ClassSet | None = None
    # Random per publisher instance: a new value means the publisher restarted (its seq starts
    # again at 0 and its class set may differ), even when the new seq happens to be larger.
    session: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "proto": PROTOCOL,
            "type": "frame",
            "stream": self.stream,
            "seq": self.seq,
            "frame_index": self.frame_index,
            "capture_ts": self.capture_ts,
            "publish_ts": self.publish_ts,
            "is_keyframe": self.is_keyframe,
            "deep_age": self.deep_age,
            "timings_ms": dict(self.timings_ms),
            "image_shape": list(self.image_shape),
            "parts": [p.to_dict() for p in self.parts],
        }
        if self.classes is not None:
            out["classes"] = self.classes.to_dict()
        if self.session is not None:
            out["session"] = self.session
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FrameHeader:
        parts = data.get("parts")
        if not isinstance(parts, list) or len(parts) > MAX_PARTS:
            raise _bad("parts", f"a list of at most {MAX_PARTS} part descriptors", parts)
        specs = tuple(PartSpec.received(p, f"parts[{i}]") for i, p in enumerate(parts))
        if len({p.name for p in specs}) != len(specs):
            raise _bad("parts", "unique part names", [p.name for p in specs])
        return cls(
            stream=check_stream_id(data.get("stream")),
            seq=_int(data, "seq"),  # type: ignore[arg-type]
            frame_index=_int(data, "frame_index"),  # type: ignore[arg-type]
            capture_ts=_float(data, "capture_ts"),  # type: ignore[arg-type]
            publish_ts=_float(data, "publish_ts"),  # type: ignore[arg-type]
            is_keyframe=_bool(data, "is_keyframe"),
            deep_age=_int(data, "deep_age"),  # type: ignore[arg-type]
            image_shape=_shape(data.get("image_shape"), "image_shape"),
            parts=specs,
            timings_ms=_timings(data),
            classes=_classes(data),
            session=None if data.get("session") is None else check_stream_id(data["session"], "session"),
        )


def encode_frame_message(header: FrameHeader, payloads: Sequence[bytes]) -> list[bytes]:
    """[topic, header, part...]: the topic is the stream id, so SUBSCRIBE filters by stream."""
    if len(payloads) != len(header.parts):
        raise ValueError(f"{len(header.parts)} part descriptors but {len(payloads)} payloads")
    return [header.stream.encode("utf-8"), dumps(header.to_dict()), *payloads]


def recv_frames(
    socket: zmq.Socket, max_frames: int, *, flags: int = 0, copy: bool = True
) -> tuple[list[Any], int]:
    """One multipart message as (its first ``max_frames`` frames, how many it had).

    ``recv_multipart`` would turn every frame of a message into a Python object before anything can
    look at the count: a peer sending a million-part message costs the receiver tens of MB and
    seconds per message. Frames past the cap are received and dropped one at a time (libzmq
    delivers a message whole, so they are all there), leaving the socket at a message boundary.
    """
    frames = [socket.recv(flags, copy=copy)]
    count = 1
    while socket.getsockopt(zmq.RCVMORE):
        if count < max_frames:
            frames.append(socket.recv(copy=copy))
        else:
            socket.recv(copy=False)  # not copied: a dropped frame may be up to ZMQ_MAXMSGSIZE
        count += 1
    return frames, count


def use_ipv6(socket: zmq.Socket, endpoint: str) -> None:
    """ZMQ_IPV6 for an endpoint written with a bracketed IPv6 host (tcp://[::1]:5555) only.

    libzmq sockets are IPv4-only by default, so such an endpoint failed to bind, or connected
    silently never. Other endpoints keep IPv4: with ZMQ_IPV6 set, libzmq resolves "localhost" to
    ::1 where /etc/hosts says so (Fedora, Arch) and never reaches a server bound to 127.0.0.1, and
    reports a bind to 127.0.0.1 as [::ffff:127.0.0.1]."""
    socket.setsockopt(zmq.IPV6, int(endpoint.lower().startswith("tcp://[")))


# topic, header and the parts
MAX_FRAME_MESSAGE_FRAMES = 2 + MAX_PARTS


def too_many_frames(count: int, limit: int, layout: str) -> WireError:
    """The error for a message of ``count`` frames where at most ``limit`` are allowed."""
    return WireError(
        ErrorCode.MALFORMED_MULTIPART,
        f"the message has {count} frames; at most {limit} are allowed ({layout})",
    )


def decode_frame_header(
    frames: Sequence[bytes | memoryview], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> FrameHeader:
    """Validate the envelope, the header and the parts' framing of a published message (the cheap
    half of decoding: ``check_part``, no image decoded). A subscriber that keeps only the newest
    message takes a stream's seq, session and classes from headers this accepts, before any part
    is decoded, so a message whose parts do not frame must not get that far."""
    if len(frames) < 2:
        raise WireError(
            ErrorCode.MALFORMED_MULTIPART, f"expected [topic, header, parts...], got {len(frames)} frame(s)"
        )
    header = FrameHeader.from_dict(loads(frames[1], expect_type="frame"))
    if bytes(frames[0]) != header.stream.encode("utf-8"):
        raise _bad("stream", f"the topic frame {bytes(frames[0])[:64]!r}", header.stream)
    if len(frames) - 2 != len(header.parts):
        raise WireError(
            ErrorCode.MALFORMED_MULTIPART,
            f"the header lists {len(header.parts)} parts but the message has {len(frames) - 2}",
        )
    if len(header.image_shape) < 2:
        raise _bad("image_shape", "[height, width] or [height, width, channels]", list(header.image_shape))
    # image_shape is the source frame's size, metadata: nothing of that size is decoded or
    # allocated here (a viewer that draws at it bounds it itself), so only the parts that are
    # decoded meet the pixel limit. A 24 MP camera's small label maps are readable.
    for spec, data in zip(header.parts, frames[2:], strict=True):
        check_part(spec, data, max_pixels=max_pixels)
    return header


# The parts every receiver draws, and what they must be: name -> (dimensions, channels or None).
STANDARD_PARTS = {"labels": (2, None), "overlay": (3, 3), "frame": (3, 3)}


def decode_frame_parts(
    header: FrameHeader, frames: Sequence[bytes | memoryview], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> dict[str, np.ndarray]:
    """Decoded parts; the standard ones are checked to be what a viewer can draw."""
    if len(header.image_shape) < 2:
        raise _bad("image_shape", "[height, width] or [height, width, channels]", list(header.image_shape))
    parts = {
        spec.name: decode_array(spec, frames[2 + i], max_pixels=max_pixels)
        for i, spec in enumerate(header.parts)
        if not spec.skipped
    }
    check_standard_parts(parts)
    return parts


def check_standard_parts(parts: Mapping[str, np.ndarray]) -> None:
    """WireError unless the standard parts present are what a receiver can draw (STANDARD_PARTS):
    the subscriber checks published messages with it and the client replies."""
    for name, (ndim, channels) in STANDARD_PARTS.items():
        array = parts.get(name)
        if array is None:
            continue
        if array.dtype != np.uint8 or array.ndim != ndim or (channels and array.shape[2] != channels):
            shape = "h x w" if ndim == 2 else f"h x w x {channels}"
            raise WireError(
                ErrorCode.BAD_SHAPE,
                f"part {name!r}: expected a {shape} uint8 array, got shape {list(array.shape)} {array.dtype}",
            )


def check_label_values(labels: np.ndarray, classes: ClassSet, what: str = "part 'labels'") -> None:
    """ProtocolError unless every label is a class id of ``classes`` (0 .. n - 1; the spec says 255,
    the ignore label, is never predicted): a map that names classes the receiver has no name or
    colour for is a broken peer, not a result."""
    if labels.size and int(labels.max()) >= len(classes):
        raise ProtocolError(
            f"{what}: expected class ids in 0..{len(classes) - 1} ({len(classes)} classes in "
            f"{classes.name!r}), got values up to {int(labels.max())}",
        )


# --------------------------------------------------------------------------- request / reply


@dataclass(frozen=True)
class SegmentRequest:
    """A parsed ``segment`` request header."""

    image: PartSpec
    id: int | str | None = None
    stream: str | None = None
    start: bool = False
    keyframe: bool = False
    frame_index: int | None = None
    capture_ts: float | None = None
    labels: str = "png"  # encoding of the label map in the reply: png | raw
    size: str = "output"  # output: engine output resolution; input: the request image's size
    overlay: bool = False
    overlay_quality: int = 80
    deadline_ms: float | None = None  # how long the client waits: a request queued longer is not run

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"proto": PROTOCOL, "type": "segment", "image": self.image.to_dict()}
        for name in ("id", "stream", "frame_index", "capture_ts", "deadline_ms"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.start:
            out["start"] = True
        if self.keyframe:
            out["keyframe"] = True
        out["reply"] = {
            "labels": self.labels,
            "size": self.size,
            "overlay": self.overlay,
            "overlay_quality": self.overlay_quality,
        }
        return out


INT_MIN = -(2**63)  # an id may be any int64, as a C or C++ client numbers its requests
ID_RULE = f"an integer in -2**63..2**63-1 or a string of at most {MAX_ID_CHARS} characters"


def request_id(data: Mapping[str, Any]) -> int | str | None:
    """The request's ``id`` if it is a valid one (to echo even when the rest is bad), else None."""
    value = data.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and INT_MIN <= value <= INT_MAX:
        return value
    if isinstance(value, str) and len(value) <= MAX_ID_CHARS:
        return value
    return None


def parse_request(data: Mapping[str, Any]) -> SegmentRequest:
    """A loaded header (see ``loads``) -> a validated request."""
    if data.get("type") != "segment":
        raise _bad("type", "'segment'", data.get("type"))
    if "id" in data and data["id"] is not None and request_id(data) is None:
        raise _bad("id", ID_RULE, data["id"])
    stream = data.get("stream")
    if stream is not None:
        check_stream_id(stream)
    image = PartSpec.from_dict(data.get("image"), "image")
    if image.name != "image":
        raise _bad("image.name", "'image'", image.name)
    reply = data.get("reply")
    if reply is None:  # absent or null, as every other optional field: the defaults
        reply = {}
    if not isinstance(reply, dict):
        raise _bad("reply", "an object", reply)
    quality = _get(reply, "overlay_quality", required=False)
    if quality is not None and (
        isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100
    ):
        raise _bad("reply.overlay_quality", "an integer in 1..100", quality)
    start = _bool(data, "start", default=False)
    if start and stream is None:
        raise _bad("start", "false when no stream is given", True)
    deadline_ms = _float(data, "deadline_ms", required=False)
    if deadline_ms is not None and deadline_ms <= 0:
        raise _bad("deadline_ms", "a number of milliseconds > 0", deadline_ms)
    return SegmentRequest(
        image=image,
        id=request_id(data),
        stream=stream,
        start=start,
        keyframe=_bool(data, "keyframe", default=False),
        frame_index=_int(data, "frame_index", required=False),
        capture_ts=_float(data, "capture_ts", required=False),
        labels=_choice(reply, "labels", ("png", "raw"), "png", path="reply.labels"),
        size=_choice(reply, "size", ("output", "input"), "output", path="reply.size"),
        overlay=_bool(reply, "overlay", default=False, path="reply.overlay"),
        overlay_quality=80 if quality is None else quality,
        deadline_ms=deadline_ms,
    )


def error_reply(req_id: int | str | None, code: ErrorCode, message: str, **extra: Any) -> list[bytes]:
    header = {
        "proto": PROTOCOL,
        "type": "segment_reply",
        "id": req_id,
        "status": "error",
        "error": {"code": code.value, "message": message[:2000]},
        **extra,
    }
    return [dumps(header)]


def decode_reply(frames: Sequence[bytes | memoryview]) -> dict[str, Any]:
    """Check a reply's envelope and header; raise ServerError for an error reply."""
    if not frames:
        raise WireError(ErrorCode.MALFORMED_MULTIPART, "empty reply")
    data = loads(frames[0], expect_type="segment_reply")
    if data.get("status") == "error":
        err = data.get("error")
        if not isinstance(err, dict):
            raise _bad("error", "an object {code, message}", err)
        raise ServerError(str(err.get("code")), str(err.get("message")))
    if data.get("status") != "ok":
        raise _bad("status", "'ok' or 'error'", data.get("status"))
    parts = data.get("parts")
    if not isinstance(parts, list) or len(parts) != len(frames) - 1:
        raise WireError(
            ErrorCode.MALFORMED_MULTIPART,
            f"reply lists parts {parts!r} but has {len(frames) - 1} part frames",
        )
    return data
