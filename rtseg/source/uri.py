"""``open_source(uri)``: one call for every kind of input, in the style of jetson-utils' videoSource."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import SplitResult, parse_qsl, urlsplit

import cv2

from ..errors import ConfigError, SourceError
from ..paths import file_uri_path
from .base import MAX_FRAME_SIDE, Source, SourceOptions, redacted
from .diagnose import host_problem, http_problem
from .images import ImageSource, is_glob, is_image_path
from .live import (
    CaptureFactory,
    LiveSource,
    camera_factory,
    network_factory,
    v4l2_factory,
)
from .synthetic import DriveParams, SyntheticSource
from .video import VideoFileSource

DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}  # where FFmpeg connects
SCHEMES = ("file", "images", "synthetic", "camera", "v4l2", "rtsp", "rtsps", "http", "https")

SUPPORTED = (
    "file://PATH or a plain path (a video, an image, a folder of images or a glob), images://DIR-OR-GLOB, "
    "camera://N, v4l2:///dev/videoN, rtsp://HOST[:PORT]/PATH, http(s)://... (MJPEG or HLS live, "
    "or a recorded .mp4/.mkv/.mov/.webm/.avi), synthetic://drive?size=WxH&fps=N&seed=S&frames=N"
)

_DEFAULTS = SourceOptions()

# An http(s) URL whose path ends with one of these is a recorded video, read like a local file.
RECORDED_VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")

_CAMERA_KEYS = {
    "width": cv2.CAP_PROP_FRAME_WIDTH,
    "height": cv2.CAP_PROP_FRAME_HEIGHT,
    "fps": cv2.CAP_PROP_FPS,
}


def open_source(
    uri: str | os.PathLike[str],
    *,
    loop: bool = False,
    resize: tuple[int, int] | None = None,
    rate: float | None = None,
    realtime: bool = False,
    reconnect: int | None = None,
    timeout: float | None = None,
    backoff: float | None = None,
    backoff_max: float | None = None,
    decode_threads: int | None = None,
    capture_factory: CaptureFactory | None = None,
) -> Source:
    """Open a frame source; iterate it for Frames and close it (or use ``with``).

    ``reconnect``, ``timeout``, ``backoff``, ``backoff_max`` and ``decode_threads`` left None take
    SourceOptions' defaults (5 attempts, 10 s, 0.5 s, 8 s, 1 thread); a default backoff or
    backoff_max follows the other when that is given beyond it (``backoff=10`` alone waits 10 s
    each time, ``backoff_max=0.2`` alone 0.2 s), and a ``backoff`` given above a ``backoff_max``
    given is a ConfigError naming both. An option given for a source that cannot use it
    (``loop=True`` for a camera, ``timeout`` for a local file: see ``inapplicable``) is a
    ConfigError, raised before anything is opened, rather than ignored.

    ``capture_factory`` replaces how camera and live stream captures are made (a
    cv2.VideoCapture-like object per call): tests use it to simulate a device that disconnects. A
    URL to a recorded video (see ``is_recorded_video``) is a file source and does not use it.
    """
    given = {
        "reconnect": reconnect,
        "timeout": timeout,
        "backoff": backoff,
        "backoff_max": backoff_max,
        "decode_threads": decode_threads,
    }
    # A default follows the value given for the other, so that either alone is taken as meant. Two
    # given are the user's both: a backoff above backoff_max is SourceOptions' error, naming both.
    # (A value that is no number is left to SourceOptions to name as well.)
    if backoff_max is None and isinstance(backoff, numbers.Real):
        given["backoff_max"] = max(backoff, _DEFAULTS.backoff_max)
    elif backoff is None and isinstance(backoff_max, numbers.Real) and backoff_max >= 0:
        given["backoff"] = min(backoff_max, _DEFAULTS.backoff)
    options = SourceOptions(
        loop=loop,
        resize=resize,
        rate=rate,
        realtime=realtime,
        **{k: v for k, v in given.items() if v is not None},  # SourceOptions holds the defaults
    )
    timeout = options.timeout
    try:
        text = os.fspath(uri)
    except TypeError:
        text = None
    if not isinstance(text, str):  # bytes too: a URI is text, and b"..." failed deep inside
        raise ConfigError(
            f"source must be a path or URI given as str or os.PathLike[str], got {uri!r} "
            f"({type(uri).__name__})"
        )
    problem = inapplicable(
        text,
        {
            "loop": loop,
            "realtime": realtime,
            "timeout": given["timeout"],
            "reconnect": reconnect,
            "backoff": backoff,
            "backoff_max": backoff_max,
            "decode_threads": decode_threads,
        },
    )
    if problem is not None:
        raise ConfigError(problem)
    if "://" not in text:
        device = _device_uri(text)
        if device is None:
            return _open_path(text, text, options)
        text = device  # the same options (and capture_factory) as the URI form
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise SourceError(f"unsupported source scheme {scheme!r} in {text!r}; supported: {SUPPORTED}")
    if scheme == "file":
        return _open_path(text, file_uri_path(_strip_query(rest, text), text, SourceError), options)
    if scheme == "images":
        # A '?' here is the glob wildcard (images://frames/f00?.png): image sources take no options.
        return ImageSource(text, _nonempty(rest, text), options)
    if scheme == "synthetic":
        scene, query = _split_query(rest, text)
        return SyntheticSource(text, scene or "drive", _drive_params(query, text), options)
    if scheme == "camera":
        device, query = _split_query(rest, text)
        if not device.isdigit():
            raise SourceError(f"camera:// takes a camera number, as in camera://0; got {text!r}")
        factory = capture_factory or camera_factory(int(device), _camera_props(query, text))
        return LiveSource(text, "camera", factory, options, hint=f"is camera {device} connected and free?")
    if scheme == "v4l2":
        device, query = _split_query(rest, text)
        factory = capture_factory or v4l2_factory(device, _camera_props(query, text))
        return LiveSource(
            text, "camera", factory, options, hint=f"is {device} a capture device, free to use?"
        )
    parts = _network_parts(text, scheme)
    if is_recorded_video(text):
        return VideoFileSource(redacted(text), text, options)
    factory = capture_factory or network_factory(text, timeout, options.decode_threads)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return LiveSource(
        redacted(text),
        "stream",
        factory,
        options,
        ffmpeg=True,
        hint=f"nothing answered at {host}:{parts.port or DEFAULT_PORTS[scheme]} within "
        f"{timeout:g} s, or the server refused the stream; check the URL, that the server runs, and "
        "credentials",
        diagnose=(
            (lambda left: http_problem(text, left))
            if scheme in ("http", "https")
            else (lambda left: host_problem(text, left))
        ),
        secret_url=text,
    )


# What each option of open_source that not every source can use applies to (rate and resize apply
# to all), by the kinds of source _option_kind tells from a URI: given for another kind, such an
# option did nothing, silently (--loop or --realtime on a stream, --timeout on a local file).
_APPLIES: dict[str, tuple[frozenset[str], str]] = {
    "loop": (
        frozenset({"local", "synthetic", "recorded"}),
        "applies to files, image folders and synthetic scenes with frames=N (restarted at their end)",
    ),
    "realtime": (
        frozenset({"local", "synthetic", "endless", "recorded"}),
        "applies to files, image folders and synthetic scenes (paced by the wall clock; a camera or "
        "stream is paced by its producer)",
    ),
    "timeout": (
        frozenset({"camera", "stream", "recorded"}),
        "applies to cameras and network URLs (the open and read timeout)",
    ),
    "reconnect": (
        frozenset({"camera", "stream"}),
        "applies to cameras and live streams (reopened after a drop)",
    ),
    "backoff": (
        frozenset({"camera", "stream"}),
        "applies to cameras and live streams (reopened after a drop)",
    ),
    "backoff_max": (
        frozenset({"camera", "stream"}),
        "applies to cameras and live streams (reopened after a drop)",
    ),
    "decode_threads": (
        frozenset({"stream"}),
        "applies to live network streams, rtsp:// and http(s):// (FFmpeg's decoder threads)",
    ),
}
_KIND_TEXT = {
    "local": "a local file or image folder",
    "synthetic": "a synthetic scene",
    "endless": "an endless synthetic scene (no frames=N)",
    "recorded": "a recorded video at a URL (read like a file, never reopened)",
    "camera": "a camera",
    "stream": "a live network stream",
}


def _keyword(name: str, value: object) -> str:
    return f"{name}={value!r}"


def inapplicable(
    uri: str | os.PathLike[str],
    options: Mapping[str, object],
    name: Callable[[str, object], str] = _keyword,
) -> str | None:
    """Why some of ``options`` (open_source's keywords and values) do not apply to the source
    ``uri`` names, as a message naming each with ``name(keyword, value)``; None when all apply.

    An option counts as given when it is not None, and ``loop`` and ``realtime`` when true (False
    asks for nothing). Told from the URI's text, before anything is opened; a URI open_source
    refuses anyway (an unknown scheme) has no problem here."""
    text = os.fspath(uri)
    if not isinstance(text, str):
        return None
    kind = _option_kind(text)
    if kind is None:
        return None
    wrong = [
        f"{name(key, options[key])} {applies}"
        for key, (kinds, applies) in _APPLIES.items()
        if kind not in kinds and _given(key, options.get(key))
    ]
    if not wrong:
        return None
    return f"{'; '.join(wrong)}; {redacted(text)} is {_KIND_TEXT[kind]}"


def _given(key: str, value: object) -> bool:
    """Whether open_source's option ``key`` asks for something: loop=False and realtime=False do
    not (they are how a source reads anyway), a value of any other option does."""
    return bool(value) if key in ("loop", "realtime") else value is not None


def _option_kind(text: str) -> str | None:
    """Which of _KIND_TEXT's kinds of source ``text`` opens, for _APPLIES; None for a scheme
    open_source does not know."""
    if "://" not in text:
        text = _device_uri(text) or "file://"
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme in ("camera", "v4l2"):
        return "camera"
    if scheme in ("rtsp", "rtsps", "http", "https"):
        return "recorded" if is_recorded_video(text) else "stream"
    if scheme == "synthetic":
        return (
            "synthetic"
            if "frames" in dict(parse_qsl(rest.partition("?")[2], keep_blank_values=True))
            else "endless"
        )
    return "local" if scheme in SCHEMES else None


def is_recorded_video(url: str) -> bool:
    """Whether an http(s) URL names a recorded video (its path ends with a container extension).

    A recorded clip must deliver every frame in order, as a local file does; read as a live stream
    (newest frame only) a slow consumer would lose most of it. The query string is the server's
    business (a token, a signature) and is ignored. rtsp:// and other http(s) URLs stay live.
    False for a URL too malformed to parse (open_source refuses it, naming what is wrong).
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and parts.path.lower().endswith(
        RECORDED_VIDEO_EXTENSIONS
    )


def is_live_uri(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` opens a live source (a camera, or a stream that is no recorded video file),
    known from its text alone: a check that must not wait for a camera or a server to answer."""
    text = os.fspath(uri)
    if not isinstance(text, str):
        return False
    if "://" not in text:
        text = _device_uri(text) or ""
    scheme = text.partition("://")[0].lower()
    if scheme in ("camera", "v4l2"):
        return True
    return scheme in ("rtsp", "rtsps", "http", "https") and not is_recorded_video(text)


def _device_uri(path: str) -> str | None:
    """A bare camera number or /dev/videoN, as the camera URI it means (None for anything else)."""
    if path.isdigit() and not Path(path).exists():
        return f"camera://{path}"
    if path.startswith("/dev/video"):
        return f"v4l2://{path}"
    return None


def _network_parts(url: str, scheme: str) -> SplitResult:
    """``url`` split, with a SourceError naming a malformed or missing host or a bad port: urlsplit's
    ValueError was a traceback, and a URL without a host failed only after the open's timeout."""
    shown = redacted(url)
    expected = f"expected {scheme}://HOST[:PORT]/PATH (IPv6 in brackets: {scheme}://[::1]:8554/live)"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise SourceError(f"{shown}: malformed host ({exc}); {expected}") from None
    if not parts.hostname:
        raise SourceError(f"{shown}: no host in the URL; {expected}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:  # port 0 is no port a server listens on
        host_port = parts.netloc.rpartition("@")[2]
        given = host_port.rpartition("]")[2] if host_port.startswith("[") else host_port
        raise SourceError(
            f"{shown}: bad port {given.partition(':')[2]!r}; expected a number from 1 to 65535 (or none, "
            "for the scheme's default)"
        )
    return parts


def _nonempty(spec: str, uri: str) -> str:
    """``spec`` unless it is empty: Path("") is the working folder, which was read silently."""
    if not spec:
        raise SourceError(
            f"empty path in source {uri!r}: give a video, an image, a folder of images or a glob "
            "(file:///data/clip.mp4, images:///data/frames)"
        )
    return spec


def _open_path(uri: str, spec: str, options: SourceOptions) -> Source:
    spec = _nonempty(spec, uri)
    if is_glob(spec):
        return ImageSource(uri, spec, options)
    path = Path(spec).expanduser()
    if path.is_dir():
        return ImageSource(uri, str(path), options)
    if path.is_file():
        if is_image_path(path):
            return ImageSource(uri, str(path), options)
        return VideoFileSource(uri, path, options)
    raise SourceError(f"no such file or folder: {path}. Sources can be: {SUPPORTED}")


def _split_query(rest: str, uri: str) -> tuple[str, dict[str, str]]:
    """The part before '?' and the options after it; an option given twice is refused (which one
    was meant cannot be known)."""
    head, _, query = rest.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    options = dict(pairs)
    if len(options) != len(pairs):
        twice = sorted({k for k, _ in pairs if sum(1 for j, _ in pairs if j == k) > 1})
        raise ConfigError(f"{uri!r}: option(s) {twice} given more than once; give each once")
    return head, options


def _strip_query(rest: str, uri: str) -> str:
    """A file:// URI's path: a '?' there starts ?options, and a file takes none."""
    head, query = _split_query(rest, uri)
    if query:
        raise SourceError(
            f"{uri!r}: file sources take no ?options (got {sorted(query)}); a '?' starts them in a "
            f"URI: for a glob use images:// (images://{rest}), for a '?' in the file name write %3F "
            f"(file://{rest.replace('?', '%3F')})"
        )
    return head


def _number(
    query: dict[str, str],
    key: str,
    uri: str,
    kind: type,
    minimum: float,
    expected: str,
    *,
    strict: bool = False,
) -> float | int | None:
    """Option ``key`` as a finite ``kind`` >= ``minimum`` (> with ``strict``), None when absent;
    otherwise a ConfigError naming the option, the ``expected`` value and the one given."""
    if key not in query:
        return None
    try:
        value = kind(query[key])
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise ConfigError(f"{uri!r}: option {key} must be {expected}, got {query[key]!r}")
    return value


def _check_keys(query: dict[str, str], allowed: tuple[str, ...], uri: str) -> None:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise ConfigError(f"{uri!r}: unknown option(s) {unknown}; allowed: {', '.join(allowed)}")


def _drive_params(query: dict[str, str], uri: str) -> DriveParams:
    _check_keys(query, ("size", "fps", "seed", "frames"), uri)
    size = (1280, 720)
    if "size" in query:
        w, _, h = query["size"].lower().partition("x")
        if not (w.isascii() and w.isdigit() and h.isascii() and h.isdigit()):  # int("²") fails
            raise ConfigError(
                f"{uri!r}: option size must be WIDTHxHEIGHT in whole pixels, like 1280x720, "
                f"got {query['size']!r}"
            )
        size = (int(w), int(h))
        if min(size) < 32:
            raise ConfigError(f"{uri!r}: option size must be at least 32x32, got {query['size']!r}")
        if max(size) > MAX_FRAME_SIDE:
            raise ConfigError(
                f"{uri!r}: option size must be at most {MAX_FRAME_SIDE} pixels per side, "
                f"got {query['size']!r}"
            )
    fps = _number(query, "fps", uri, float, 0, "a positive finite number of frames per second", strict=True)
    seed = _number(query, "seed", uri, int, 0, "a whole number >= 0")
    frames = _number(query, "frames", uri, int, 1, "a whole number of frames >= 1")
    return DriveParams(
        size=size,
        fps=30.0 if fps is None else float(fps),
        seed=0 if seed is None else int(seed),
        frames=None if frames is None else int(frames),
    )


def _camera_props(query: dict[str, str], uri: str) -> dict[int, float]:
    _check_keys(query, tuple(_CAMERA_KEYS), uri)
    props: dict[int, float] = {}
    for key in query:
        if key == "fps":
            value = _number(query, key, uri, float, 0, "a positive number of frames per second", strict=True)
        else:
            value = _number(query, key, uri, int, 1, "a whole number of pixels >= 1")
        props[_CAMERA_KEYS[key]] = float(value)  # type: ignore[arg-type]
    return props
