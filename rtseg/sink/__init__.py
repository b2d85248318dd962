"""Outputs by URI: files, an OpenCV window, a ZeroMQ stream, or nothing. See ``open_sink``."""

from __future__ import annotations

import importlib
import math
import numbers
import os
from typing import Any
from urllib.parse import parse_qsl

from ..errors import SinkError
from .base import Policy, Sink, SinkStats
from .packet import Packet

DEFAULT_FPS = 30.0  # written into a video when the source's rate is not known
SCHEMES = ("file", "display", "zmq", "null")
SUPPORTED = (
    "file://PATH or a plain path (.mp4, .avi, .mkv, .mov, or an image pattern such as out/%06d.png), "
    "display://0 (a window), zmq://tcp://HOST:PORT (a ZeroMQ publisher), null:// (discard)"
)


def open_sink(
    uri: str | os.PathLike[str],
    *,
    policy: Policy = "block",
    fps: float | None = None,
    queue_size: int | None = None,
    timed: bool = False,
    **options: Any,
) -> Sink:
    """Open an output. ``policy`` is "drop" for live sources (never slow inference down) or "block"
    for files (write every frame); the pipeline chooses it from the source. ``fps`` is the frame
    rate written into video files (None: not known, 30 is written). ``timed`` (the pipeline's
    choice for sources that drop frames): a video file places each frame by its capture time,
    repeating the previous one over the gaps, so that it plays as long as the run lasted; other
    outputs have no timeline and ignore it."""
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

        return FileSink(
            text, rest, fps=DEFAULT_FPS if fps is None else fps, policy=policy, timed=timed, **options
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
        return publisher.open_publisher_sink(text, policy=policy, **options)
    raise SinkError(f"unsupported sink {text!r}; outputs can be: {SUPPORTED}")


__all__ = ["SCHEMES", "SUPPORTED", "Packet", "Policy", "Sink", "SinkStats", "open_sink"]
