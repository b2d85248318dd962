"""Outputs by URI: files, an OpenCV window, a ZeroMQ stream, or nothing. See ``open_sink``."""

from __future__ import annotations

import importlib
import math
import numbers
import os
from typing import Any
from urllib.parse import parse_qsl

from ..errors import SinkError
from ..paths import file_uri_path
from .base import Policy, Sink, SinkStats
from .packet import Packet

DEFAULT_FPS = 30.0  # written into a video when the source's rate is not known (or none is set)
SCHEMES = ("file", "display", "zmq", "null")
SUPPORTED = (
    "file://PATH or a plain path (.mp4, .avi, .mkv, .mov, or an image pattern such as out/%06d.png), "
    "display://0 (a window), zmq://tcp://HOST:PORT (a ZeroMQ publisher), null:// (discard)"
)


def open_sink(
    uri: str | os.PathLike[str],
    *,
    policy: Policy | None = None,
    fps: float | None = None,
    queue_size: int | None = None,
    timed: bool | None = None,
    **options: Any,
) -> Sink:
    """Open an output. ``policy`` is "drop" for live sources (never slow inference down) or "block"
    for files (write every frame). ``fps`` is the frame rate written into video files. ``timed``
    (for sources that drop frames): a video file places each frame by its capture time,
    repeating the previous one over the gaps, so that it plays as long as the run lasted; other
    outputs have no timeline and ignore it. Each left None is chosen by the ``Pipeline`` the sink
    is given to, from its source (as for a sink URI given to it); used alone, a file sink blocks
    and writes an untimed 30 FPS video, and the other outputs drop (their ``standalone_policy``)."""
    text = os.fspath(uri)
    if fps is not None and not (
        isinstance(fps, numbers.Real) and not isinstance(fps, bool) and 0 < fps < math.inf
    ):
        # 0 is no "unknown" (that is None): a video said to play at 0 (or inf) FPS cannot be written.
        raise SinkError(f"{text!r}: fps must be None or a positive finite number, got {fps!r}")
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "file", text
    scheme = scheme.lower()
    if queue_size is not None:
        options["queue_size"] = queue_size
    if scheme == "file":
        from .file import FileSink

        # A plain path is taken as written (a '%' in it is an image pattern's field); a file:// URI
        # is read as a source's is, escapes decoded before the pattern is looked for.
        return FileSink(
            text, _file_path(rest, text) if sep else rest, fps=fps, policy=policy, timed=timed, **options
        )
    if scheme == "null":
        from .null import NullSink

        where, _, query = rest.partition("?")
        if where:
            raise SinkError(f"{text!r}: null:// discards the results and takes no path, got {where!r}")
        pairs = parse_qsl(query)
        params = dict(pairs)
        if len(params) != len(pairs):  # which one was meant cannot be known (the last was kept)
            keys = [k for k, _ in pairs]
            twice = sorted({k for k in keys if keys.count(k) > 1})
            raise SinkError(f"{text!r}: option(s) {twice} given more than once; give each once")
        unknown = sorted(set(params) - {"overlay"})
        if unknown:
            raise SinkError(f"{text!r}: unknown option(s) {unknown}; null:// takes ?overlay=1")
        draw = params.get("overlay", "0").lower()
        if draw not in ("0", "1", "false", "true"):
            raise SinkError(f"{text!r}: overlay must be 1 or 0 (true or false), got {draw!r}")
        return NullSink(text, draw=draw in ("1", "true"), policy=policy, **options)
    if scheme == "display":
        from .display import DisplaySink

        return DisplaySink(text, policy=policy, **options)
    if scheme == "zmq":
        # Lazy: pyzmq and the wire format load only for streaming outputs.
        publisher = importlib.import_module("rtseg.stream.publisher")
        if policy is not None:  # else the sink's own: a pipeline's choice, or standalone_policy
            options["policy"] = policy
        return publisher.open_publisher_sink(text, **options)
    raise SinkError(f"unsupported sink {text!r}; outputs can be: {SUPPORTED}")


def _file_path(spec: str, uri: str) -> str:
    """The path a file:// sink URI names (``file_uri_path``), refused where decoding made a control
    character: a '%' starts an escape in a URI, so file:///out/%06d.png names '\\x06d.png', not
    a pattern; its field is written %2506d, or the path is given plain."""
    path = file_uri_path(spec, uri, SinkError)
    control = next((c for c in path if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if control is not None:
        raise SinkError(
            f"{uri!r}: decodes to the path {path!r}, which holds the control character {control!r}: in "
            "a file:// URI a '%' starts an escape (%20 is a space); write a '%' as %25 "
            "(file:///out/%2506d.png for the pattern /out/%06d.png) or give a plain path"
        )
    return path


__all__ = ["SCHEMES", "SUPPORTED", "Packet", "Policy", "Sink", "SinkStats", "open_sink"]
