"""A client for the segmentation server that never hangs: the lazy-pirate pattern.

A REQ socket whose peer dies mid-request waits forever (imagezmq's hang). Here every attempt waits
at most ``timeout`` seconds; on silence the socket is closed, discarding the stale request, and a
fresh one resends it, up to ``retries`` more times, after which ``StreamTimeout`` is raised, at
most ``timeout * (retries + 1)`` seconds after the call. That bound holds for the whole call: when
the server lost a stream and the client starts it again, the second request gets only what is left
of it. The next call starts over with a new socket, so the client works again as soon as the server
is back.

A retried request may have reached a server that was merely slow; for a stream this advances its
scheduler state one extra frame, which costs at most an earlier keyframe.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from ..data.labels import ClassSet
from ..errors import ConfigError, ProtocolError, StreamTimeout
from .endpoint import DEFAULT_SERVER_ENDPOINT, endpoint_of, open_socket
from .protocol import (
    DEFAULT_MAX_PIXELS,
    INT_MAX,
    MAX_PARTS,
    ErrorCode,
    PartSpec,
    SegmentRequest,
    ServerError,
    WireError,
    _bool,
    _int,
    check_int_option,
    check_label_values,
    check_standard_parts,
    check_stream_id,
    decode_array,
    decode_reply,
    dumps,
    encode_array,
    recv_frames,
    too_many_frames,
)

log = logging.getLogger(__name__)
_MAX_REPLY_FRAMES = 1 + MAX_PARTS  # the header and its parts

_REQUIRED = object()


def _reply_field(
    header: dict[str, Any], name: str, convert: Callable[[Any], Any], default: Any = _REQUIRED
) -> Any:
    """One reply header field, converted; a ProtocolError naming it (not a bare ValueError from deep
    inside) when a server sends it missing or malformed."""
    try:
        if name not in header and default is not _REQUIRED:
            return default
        return convert(header[name])
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
        raise ProtocolError(
            f"reply header field {name!r} is missing or bad: {type(exc).__name__}: {exc}"
        ) from None


@dataclass(frozen=True, eq=False)
class Reply:
    """A successful reply: the label map (and overlay), with the server's facts about it."""

    labels: np.ndarray
    overlay: np.ndarray | None
    is_keyframe: bool
    deep_age: int
    timings_ms: dict[str, float]
    image_shape: tuple[int, ...]
    input_size: tuple[int, int]
    classes: ClassSet
    stream: str | None
    frame_index: int | None
    rtt_ms: float  # this call, send to reply, including retries
    attempts: int
    stream_restarted: bool = False  # the server had lost this stream; it was started again
    header: dict[str, Any] = field(default_factory=dict, repr=False)


class Client:
    """Talks to one server; use one per thread. ``retries`` counts attempts after the first."""

    def __init__(
        self,
        endpoint: str = DEFAULT_SERVER_ENDPOINT,
        *,
        timeout: float = 2.0,
        retries: int = 2,
        curve_keys: str | os.PathLike[str] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        """``endpoint``: the server's, TRANSPORT://ADDRESS with or without ``zmq://`` in front; by
        default the default ``Server``'s."""
        # Checked here, by name: a wrong type failed later as a bare TypeError (or, for a string
        # timeout, on the first request).
        endpoint = endpoint_of(endpoint, bind=False, who="a client", example=DEFAULT_SERVER_ENDPOINT)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, numbers.Real)
            or not 0 < timeout < math.inf  # waiting forever is the hang this client exists to avoid
        ):
            raise ConfigError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, numbers.Integral) or retries < 0:
            raise ConfigError(f"retries must be an integer >= 0, got {retries!r}")
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 1:
            raise ConfigError(f"max_pixels must be an integer >= 1, got {max_pixels!r}")
        if curve_keys is not None and not isinstance(curve_keys, (str, os.PathLike)):
            raise ConfigError(f"curve_keys must be None or a key folder path, got {curve_keys!r}")
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.curve_keys = curve_keys
        self.max_pixels = int(max_pixels)
        self._ctx = zmq.Context()
        self._socket: zmq.Socket | None = None
        self._ids = itertools.count(1)
        self._started: set[str] = set()
        self.reconnects = 0
        self.last_attempts = 0
        self._busy = threading.Lock()  # one request at a time, as the REQ socket allows

    # ------------------------------------------------------------------ transport

    def _open(self) -> zmq.Socket:
        socket, _ = open_socket(
            self._ctx, zmq.REQ, self.endpoint, bind=False, doing="connect to", curve_keys=self.curve_keys
        )
        return socket

    def _drop_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def request(self, frames: Sequence[bytes], *, deadline: float | None = None) -> list[bytes]:
        """Send raw request frames, return the raw reply frames (lazy pirate, no decoding).

        For tools and tests that speak the wire format themselves. ``deadline`` (a
        ``time.monotonic()`` instant) caps the attempts further, so that a caller sending more than
        one request keeps its own bound; by default it is ``timeout * (retries + 1)`` from now."""
        if not self._busy.acquire(blocking=False):
            raise ConfigError(
                "this Client is waiting for a reply in another thread: its REQ socket carries one "
                "request at a time; give each thread its own Client"
            )
        try:
            return self._request(frames, deadline)
        finally:
            self._busy.release()

    def _request(self, frames: Sequence[bytes], deadline: float | None) -> list[bytes]:
        if self._ctx.closed:
            raise ConfigError("this client is closed")
        attempts = self.retries + 1
        if deadline is None:
            deadline = time.monotonic() + self.timeout * attempts
        attempt = 0
        while attempt < attempts:
            wait = min(self.timeout, deadline - time.monotonic())
            if wait <= 0:
                break
            attempt += 1
            if self._socket is None:
                self._socket = self._open()
            socket = self._socket
            try:
                socket.send_multipart(list(frames), zmq.NOBLOCK)
                if socket.poll(int(wait * 1000), zmq.POLLIN):
                    self.last_attempts = attempt
                    frames, count = recv_frames(socket, _MAX_REPLY_FRAMES)
                    if count > len(frames):
                        raise ProtocolError(
                            f"reply from {self.endpoint}: "
                            + too_many_frames(
                                count, _MAX_REPLY_FRAMES, f"header and at most {MAX_PARTS} parts"
                            ).detail
                        )
                    return frames
            except zmq.ZMQError as exc:
                log.debug("attempt %d to %s failed: %s", attempt, self.endpoint, exc)
            except BaseException:
                # Ctrl-C, a signal handler's exception or a bad reply mid-attempt: the REQ socket
                # may still wait for a reply, and its next send would fail (EFSM) without sending.
                self._drop_socket()
                raise
            # Silence: this REQ socket is stuck waiting for a reply that may never come.
            self._drop_socket()
            self.reconnects += 1
            if attempt < attempts and deadline > time.monotonic():
                log.warning(
                    "no reply from %s in %.3g s; retrying (%d/%d)",
                    self.endpoint,
                    self.timeout,
                    attempt,
                    attempts - 1,
                )
        refused = (
            ", or it refused this client's CURVE keys"
            if self.curve_keys is not None
            else ", or it requires CurveZMQ keys (curve_keys=, rtseg's --curve-keys)"
        )
        raise StreamTimeout(
            f"no reply from {self.endpoint} after {attempt} attempt(s) of at most {self.timeout:.3g} s "
            f"(server down or overloaded, or a frame over its size limit{refused})"
        )

    # ------------------------------------------------------------------ segmentation

    def segment(
        self,
        image: np.ndarray | bytes,
        *,
        stream_id: str | None = None,
        encoding: str = "raw",
        quality: int = 90,
        frame_index: int | None = None,
        capture_ts: float | None = None,
        keyframe: bool = False,
        labels: str = "png",
        size: str = "output",
        overlay: bool = False,
        overlay_quality: int = 80,
    ) -> Reply:
        """Segment one BGR uint8 image (an HxWx3 array, or JPEG/PNG bytes with ``encoding``).

        With ``stream_id`` the server schedules keyframes over this client's sequence; the first
        call for an id (and any call after the server lost it) starts the stream."""
        if stream_id is not None:
            check_stream_id(stream_id, "stream_id")
        # JSON takes Python numbers: a NumPy scalar failed in the encoder with a builtin TypeError
        if frame_index is not None:
            check_int_option("frame_index", frame_index, 0, INT_MAX)
            frame_index = int(frame_index)
        if capture_ts is not None:
            if isinstance(capture_ts, bool) or not isinstance(capture_ts, numbers.Real):
                raise ConfigError(f"capture_ts must be a number of seconds, got {capture_ts!r}")
            if not math.isfinite(capture_ts):
                raise ConfigError(f"capture_ts must be finite, got {capture_ts!r}")
            capture_ts = float(capture_ts)
        if isinstance(image, (bytes, bytearray, memoryview)):
            if encoding not in ("jpeg", "png"):
                raise ConfigError(f"encoded image bytes need encoding='jpeg' or 'png', got {encoding!r}")
            spec, payload = PartSpec("image", encoding), bytes(image)
        else:
            if encoding not in ("raw", "jpeg", "png"):
                raise ConfigError(f"encoding must be 'raw', 'jpeg' or 'png', got {encoding!r}")
            spec, payload = encode_array("image", image, encoding, quality=quality)
        restarted = False
        t0 = time.perf_counter()
        # one bound for the whole call, restart included (the module docstring promises it)
        deadline = time.monotonic() + self.timeout * (self.retries + 1)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StreamTimeout(
                    f"no time left to restart stream {stream_id!r} on {self.endpoint} within "
                    f"timeout * (retries + 1) = {self.timeout * (self.retries + 1):.3g} s"
                )
            start = stream_id is not None and stream_id not in self._started
            req_id = next(self._ids)
            request = SegmentRequest(
                image=spec,
                id=req_id,
                stream=stream_id,
                start=start,
                keyframe=keyframe,
                frame_index=frame_index,
                capture_ts=capture_ts,
                labels=labels,
                size=size,
                overlay=overlay,
                overlay_quality=overlay_quality,
                # after that this client no longer waits for it (a restart: for what is left)
                deadline_ms=(min(self.timeout, left) if restarted else self.timeout) * 1000,
            )
            frames = self.request([dumps(request.to_dict()), payload], deadline=deadline)
            try:
                header = decode_reply(frames)
            except ServerError as exc:
                if exc.code == ErrorCode.UNKNOWN_STREAM.value and stream_id is not None and not restarted:
                    log.info("server %s lost stream %r; starting it again", self.endpoint, stream_id)
                    self._started.discard(stream_id)
                    restarted = True
                    continue
                raise
            if header.get("id") != req_id:
                raise ProtocolError(f"reply id {header.get('id')!r} does not match request id {req_id}")
            if stream_id is not None:
                self._started.add(stream_id)
            return self._reply(header, frames, time.perf_counter() - t0, restarted)

    def _reply(self, header: dict[str, Any], frames: list[bytes], rtt: float, restarted: bool) -> Reply:
        parts: dict[str, np.ndarray] = {}
        specs = [PartSpec.received(item, f"parts[{i}]") for i, item in enumerate(header["parts"])]
        if len({spec.name for spec in specs}) != len(specs):  # the second 'labels' replaced the first
            raise ProtocolError(
                f"reply header field 'parts': expected unique part names, got {[s.name for s in specs]}"
            )
        for i, spec in enumerate(specs):
            if not spec.skipped:
                parts[spec.name] = decode_array(spec, frames[1 + i], max_pixels=self.max_pixels)
        if "labels" not in parts:
            raise ProtocolError("the reply has no labels part")
        # what the subscriber checks of a published message: an h x w uint8 label map (and an
        # h x w x 3 overlay) of the reply's own classes, not whatever a foreign server sent
        check_standard_parts(parts)
        classes = _reply_field(header, "classes", ClassSet.from_dict)
        check_label_values(parts["labels"], classes)
        try:  # the wire format's own checks: bool("false") was True, int(-1) a deep_age
            is_keyframe = _bool(header, "is_keyframe", default=False)
            deep_age = _int(header, "deep_age", required=False)
            frame_index = _int(header, "frame_index", required=False)
        except WireError as exc:
            raise ProtocolError(f"reply header {exc.detail}") from None
        return Reply(
            labels=parts["labels"],
            overlay=parts.get("overlay"),
            is_keyframe=is_keyframe,
            deep_age=0 if deep_age is None else deep_age,
            timings_ms=_reply_field(header, "timings_ms", dict, {}),
            image_shape=_reply_field(header, "image_shape", tuple, ()),
            input_size=_reply_field(header, "input_size", lambda v: (int(v[0]), int(v[1]))),
            classes=classes,
            stream=header.get("stream"),
            frame_index=frame_index,
            rtt_ms=rtt * 1000.0,
            attempts=self.last_attempts,
            stream_restarted=restarted,
            header=header,
        )

    def close(self) -> None:
        """Close the socket; from another thread, after the request in flight there has ended (it
        is bounded by timeout x attempts): closing a socket another thread polls is unsafe."""
        with self._busy:
            self._drop_socket()
            if not self._ctx.closed:
                self._ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
