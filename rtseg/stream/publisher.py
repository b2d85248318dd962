"""Publishing results on a ZeroMQ PUB socket, and the ``zmq://`` sink built on it.

A PUB socket never blocks its sender: each subscriber has its own queue of ``sndhwm`` messages
and, when that is full, that subscriber misses messages while the others carry on. Those misses
are invisible to the publisher (libzmq's PUB ``send`` succeeds regardless), so every message has a
per-stream sequence number and subscribers count the gaps. What the publisher itself drops, when
encoding falls behind the pipeline, is counted by the sink's queue (``SinkStats.dropped``).
Encoding runs on the sink's thread, never on the inference thread.

Every publisher draws a random ``session`` id that rides on each header: a restarted publisher
(seq from 0 again, perhaps another model and class set) is a new session to its subscribers even
when they missed its first messages while reconnecting.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import zmq

from ..data.labels import ClassSet
from ..errors import ConfigError, InputTypeError
from ..result import SegResult
from ..sink.base import Policy, Sink
from ..sink.packet import Packet
from ..source.frame import Frame
from .endpoint import DEFAULT_PUB_ENDPOINT, check_endpoint, endpoint_of, open_socket
from .protocol import (
    SOCKOPT_INT_MAX,
    STREAM_ID_RULE,
    FrameHeader,
    PartSpec,
    WireError,
    check_int_option,
    check_stream_id,
    encode_array,
    encode_frame_message,
)

log = logging.getLogger(__name__)

PART_NAMES = ("overlay", "labels", "frame")
# close() waits at most this long for the messages already queued to subscribers to be written
# (ZMQ_LINGER): send only queues them, and closing with linger 0 lost the last message(s) of a run
# (a video's last frames). Nothing is queued without subscribers, so close stays instant then; a
# subscriber that stopped reading costs close at most this.
CLOSE_LINGER_S = 1.0


def carries_classes(seq: int, every: int) -> bool:
    """Whether message ``seq`` of a session carries the class set: seq 0, 1, 2, 4, 8, ... below
    ``every``, then every ``every``-th. A subscriber that joins k messages late (a restarted
    publisher's subscribers take ~100 ms to reconnect) learns it within about k more messages, not
    ``every``; the cost is log2(every) extra class sets per session."""
    return seq % every == 0 or (seq < every and seq & (seq - 1) == 0)


@dataclass(frozen=True)
class PublishOptions:
    """What each message carries. ``classes_every``: the class names and palette ride on the
    first messages (see ``carries_classes``) and then every N-th, so a late subscriber learns them
    within N frames, sooner when it joined soon after the start."""

    parts: tuple[str, ...] = ("overlay", "labels")
    labels_encoding: str = "png"
    frame_encoding: str = "jpeg"
    quality: int = 80
    stream: str = "rtseg"
    sndhwm: int = 2
    classes_every: int = 30

    def __post_init__(self) -> None:
        if (
            not isinstance(self.parts, (tuple, list))  # 5 raised a bare TypeError iterating it
            or not self.parts
            or any(p not in PART_NAMES for p in self.parts)
            or len(set(self.parts)) != len(self.parts)
        ):
            raise ConfigError(
                f"PublishOptions.parts must be distinct names from {PART_NAMES}, got {self.parts!r}"
            )
        if self.labels_encoding not in ("png", "raw"):
            raise ConfigError(
                f"PublishOptions.labels_encoding must be 'png' or 'raw', got {self.labels_encoding!r}"
            )
        if self.frame_encoding not in ("jpeg", "png", "raw"):
            raise ConfigError(
                f"PublishOptions.frame_encoding must be 'jpeg', 'png' or 'raw', got {self.frame_encoding!r}"
            )
        check_int_option("PublishOptions.quality", self.quality, 1, 100)
        try:
            check_stream_id(self.stream)
        except WireError:
            raise ConfigError(
                f"PublishOptions.stream must be {STREAM_ID_RULE}, got {self.stream!r}"
            ) from None
        check_int_option("PublishOptions.sndhwm", self.sndhwm, 1, SOCKOPT_INT_MAX)  # ZMQ_SNDHWM: a C int
        check_int_option("PublishOptions.classes_every", self.classes_every, 1)


@dataclass(frozen=True)
class PublisherStats:
    sent: int
    bytes_sent: int
    encode_ms_total: float


class Publisher:
    """A bound PUB socket sending rtseg/1 ``frame`` messages. ``publish()`` may be called from
    several threads: each message gets its own ``seq`` and goes out whole, in ``seq`` order (a
    ZeroMQ socket is not thread-safe; unserialised, two threads interleaved their frames).

    ``close()`` gives the messages already sent up to ``CLOSE_LINGER_S`` to reach the subscribers
    (a subscriber's full queue still drops messages while publishing, as SNDHWM says)."""

    def __init__(
        self,
        endpoint: str = DEFAULT_PUB_ENDPOINT,
        options: PublishOptions | None = None,
        *,
        curve_keys: str | os.PathLike[str] | None = None,
    ) -> None:
        """``endpoint``: where to bind, TRANSPORT://ADDRESS with or without ``zmq://`` in front; a
        port in use (or an address no interface has) is a ConfigError naming it."""
        endpoint = endpoint_of(
            endpoint,
            bind=True,
            who="a publisher",
            options_hint="give them as PublishOptions, or open the zmq:// URI with rtseg.open_sink",
        )
        self.options = options or PublishOptions()
        self._ctx = zmq.Context()
        self._socket, self._curve = open_socket(
            self._ctx,
            zmq.PUB,
            endpoint,
            bind=True,
            doing="publish on",
            linger_ms=int(CLOSE_LINGER_S * 1000),
            options=[(zmq.SNDHWM, int(self.options.sndhwm))],
            curve_keys=curve_keys,
            term_on_failure=True,
        )
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._seq = 0
        self.session = secrets.token_hex(8)  # new per instance: how subscribers tell a restart
        self._last_classes: ClassSet | None = None
        self._sent = 0
        self._bytes = 0
        self._encode_ms = 0.0
        self._lock = threading.Lock()  # the stats
        # seq, the class-set state and the socket. Reentrant: close() from a signal handler that
        # interrupted this thread's publish() waited for the lock it held, forever.
        self._send_lock = threading.RLock()

    def publish(self, frame: Frame, result: SegResult, overlay: np.ndarray | None = None) -> None:
        """Encode and send one result; ``overlay`` (an HxWx3 uint8 BGR image) is needed when the
        options ask for it. What cannot be sent is refused naming it: InputTypeError for a wrong
        type, ConfigError for an array the part's encoding cannot hold."""
        if self._socket.closed:
            raise ConfigError(f"publisher on {self.endpoint} is closed")
        # Checked by name here: a wrong type failed inside as an AttributeError.
        if not isinstance(frame, Frame):
            raise InputTypeError(f"publish: frame must be a rtseg Frame, got {type(frame).__name__}")
        if not isinstance(result, SegResult):
            raise InputTypeError(f"publish: result must be a rtseg SegResult, got {type(result).__name__}")
        o = self.options
        t0 = time.perf_counter()
        specs: list[PartSpec] = []
        payloads: list[bytes] = []
        for name in o.parts:
            if name == "labels":
                spec, data = encode_array("labels", result.labels, o.labels_encoding)
            elif name == "overlay":
                if overlay is None:
                    raise ConfigError(
                        f"publish: overlay is None, but the publish options' parts {o.parts} include "
                        "the overlay: pass overlay= (an HxWx3 uint8 BGR image, such as annotate(...))"
                    )
                spec, data = encode_array("overlay", overlay, "jpeg", quality=o.quality)
            else:
                spec, data = encode_array("frame", frame.image, o.frame_encoding, quality=o.quality)
            specs.append(spec)
            payloads.append(data)
        encode_ms = (time.perf_counter() - t0) * 1000
        # The parts are encoded in parallel; numbering and sending are serialised, so that each
        # message gets its own seq and goes out whole, in seq order.
        with self._send_lock:
            if self._socket.closed:
                raise ConfigError(f"publisher on {self.endpoint} is closed")
            t0 = time.perf_counter()
            send_classes = carries_classes(self._seq, o.classes_every) or result.classes != self._last_classes
            header = FrameHeader(
                stream=o.stream,
                seq=self._seq,
                frame_index=result.frame_index,
                capture_ts=float(frame.timestamp),  # a NumPy float is no JSON number
                publish_ts=time.time(),
                is_keyframe=result.is_keyframe,
                deep_age=result.deep_age,
                image_shape=tuple(int(s) for s in frame.image.shape),
                parts=tuple(specs),
                timings_ms={k: round(float(v), 3) for k, v in result.timings.items()},
                classes=result.classes if send_classes else None,
                session=self.session,
            )
            message = encode_frame_message(header, payloads)
            encode_ms += (time.perf_counter() - t0) * 1000
            # PUB never blocks: a subscriber whose queue is full just misses this message.
            try:
                self._socket.send_multipart(message, flags=zmq.NOBLOCK, copy=False)
            except zmq.ZMQError:
                if self._socket.closed:  # closed under this publish(), by a signal handler
                    raise ConfigError(f"publisher on {self.endpoint} is closed") from None
                raise
            self._seq += 1
            self._last_classes = result.classes
        with self._lock:
            self._sent += 1
            self._bytes += sum(len(m) for m in message)
            self._encode_ms += encode_ms

    @property
    def stats(self) -> PublisherStats:
        with self._lock:
            return PublisherStats(self._sent, self._bytes, self._encode_ms)

    def _teardown(self) -> None:
        self._socket.close(linger=int(CLOSE_LINGER_S * 1000))  # the last messages get out
        if self._curve is not None:
            self._curve.close()
        self._ctx.term()

    def close(self) -> None:
        with self._send_lock:  # not under a publish() in another thread
            if not self._socket.closed:
                self._teardown()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PublisherSink(Sink):
    """The ``zmq://`` sink: packets are encoded and published on the sink's own thread."""

    def __init__(
        self,
        uri: str,
        endpoint: str = DEFAULT_PUB_ENDPOINT,
        options: PublishOptions | None = None,
        *,
        curve_keys: str | os.PathLike[str] | None = None,
        queue_size: int = 2,
        policy: Policy | None = None,
    ) -> None:
        # Bind first: a busy port must fail here, before the sink thread exists; and unbind again
        # when the sink's own checks fail, or the port stays taken while the error is referenced.
        self.publisher = Publisher(endpoint, options, curve_keys=curve_keys)
        try:
            super().__init__(uri, queue_size=queue_size, policy=policy)
        except BaseException:
            self.publisher.close()
            raise

    @property
    def destination(self) -> str:
        return f"{self.uri} (bound to {self.publisher.endpoint})"

    @property
    def draws(self) -> bool:
        return "overlay" in self.publisher.options.parts

    def emit(self, packet: Packet) -> None:
        overlay = packet.overlay() if "overlay" in self.publisher.options.parts else None
        self.publisher.publish(packet.frame, packet.result, overlay)

    def release(self) -> None:
        s = self.publisher.stats
        log.info(
            "zmq sink %s: published %d messages (%.1f MB)",
            self.publisher.endpoint,
            s.sent,
            s.bytes_sent / 1e6,
        )
        self.publisher.close()


_QUERY_KEYS = {
    "parts": "parts",
    "labels": "labels_encoding",
    "frame": "frame_encoding",
    "quality": "quality",
    "stream": "stream",
    "hwm": "sndhwm",
    "classes_every": "classes_every",
    "curve_keys": "curve_keys",  # a key folder (rtseg keys DIR): encrypt, admit only its clients
}


def parse_zmq_uri(uri: str) -> tuple[str, dict[str, Any]]:
    """``zmq://tcp://127.0.0.1:5555?parts=labels,overlay&quality=80`` -> (endpoint, options);
    ``curve_keys=DIR`` encrypts (rtseg run has no other way to ask for it)."""
    if not uri.startswith("zmq://"):
        raise ConfigError(f"a ZeroMQ URI starts with zmq://, got {uri!r}")
    rest = uri[len("zmq://") :]
    endpoint, _, query = rest.partition("?")
    endpoint = endpoint or DEFAULT_PUB_ENDPOINT
    if "://" not in endpoint:
        raise ConfigError(
            f"{uri!r}: expected zmq://TRANSPORT://ADDRESS such as zmq://tcp://127.0.0.1:5555 or zmq://ipc:///tmp/seg"
        )
    check_endpoint(endpoint, bind=True)
    options: dict[str, Any] = {}
    pairs = parse_qsl(query, keep_blank_values=True)
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:  # which one was meant cannot be known (parts=labels&parts=overlay kept the last)
        raise ConfigError(
            f"{uri!r}: option(s) {twice} given more than once; give each once "
            "(several parts go in one: parts=labels,overlay)"
        )
    for key, value in pairs:
        if key not in _QUERY_KEYS:
            raise ConfigError(f"{uri!r}: unknown option {key!r}; known: {', '.join(_QUERY_KEYS)}")
        name = _QUERY_KEYS[key]
        if name == "parts":
            options[name] = tuple(p for p in value.split(",") if p)
        elif name in ("quality", "sndhwm", "classes_every"):
            try:
                options[name] = int(value)
            except ValueError:
                raise ConfigError(f"{uri!r}: option {key} must be an integer, got {value!r}") from None
        else:
            options[name] = value
    try:  # checked here, so that the error names the key the user wrote
        PublishOptions(**{k: v for k, v in options.items() if k != "curve_keys"})
    except ConfigError as exc:
        message = str(exc)
        for key, name in _QUERY_KEYS.items():
            message = message.replace(f"PublishOptions.{name} ", f"option {key} ")
        raise ConfigError(f"{uri!r}: {message}") from None
    return endpoint, options


def open_publisher_sink(uri: str, **options: Any) -> PublisherSink:
    """The ``open_sink`` entry for ``zmq://`` URIs.

    Options come from the URI's query string or as keywords (``parts``, ``labels_encoding``,
    ``frame_encoding``, ``quality``, ``stream``, ``sndhwm``, ``classes_every``, ``curve_keys``,
    ``queue_size``, ``policy``); naming one in both places is an error.
    """
    endpoint, from_uri = parse_zmq_uri(uri)
    both = sorted(set(from_uri) & set(options))
    if both:
        raise ConfigError(f"{uri!r}: option(s) {', '.join(both)} given both in the URI and as arguments")
    sink_keys = {"curve_keys", "queue_size", "policy"}
    publish_fields = set(PublishOptions.__dataclass_fields__)
    unknown = sorted(set(options) - sink_keys - publish_fields)
    if unknown:
        raise ConfigError(
            f"open_publisher_sink: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(sink_keys | publish_fields))}"
        )
    given = {**from_uri, **options}
    publish = {k: v for k, v in given.items() if k in publish_fields}
    if isinstance(publish.get("parts"), str):
        publish["parts"] = tuple(p for p in publish["parts"].split(",") if p)
    sink_args = {k: v for k, v in given.items() if k in sink_keys}
    return PublisherSink(uri, endpoint, PublishOptions(**publish), **sink_args)
