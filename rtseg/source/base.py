"""What every frame source shares: options, info, iteration, resizing, rate and real-time pacing.

Two kinds of source exist. *Media* sources (files, image folders, synthetic scenes) deliver every
frame in order, as fast as the consumer takes them, unless ``realtime`` asks for wall-clock pacing,
which drops frames the consumer is too slow for. *Live* sources (cameras, network streams) are
paced by the producer: a capture thread keeps only the newest frame, so a slow consumer skips
frames instead of falling behind (see ``live.py``).
"""

from __future__ import annotations

import logging
import math
import numbers
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import cv2
import numpy as np

from ..errors import ConfigError, SourceError
from .frame import Frame

log = logging.getLogger(__name__)

# The largest frame side a source delivers (synthetic size=, resize=): above any camera or video
# (8K is 7680x4320) and still within what NumPy, cv2.resize and OpenCV's drawing handle (checked at
# 16384x16384, 768 MiB a BGR frame). Larger requests failed deep inside NumPy or cv2.resize with an
# out-of-memory traceback, after the model had loaded.
MAX_FRAME_SIDE = 16384

# FFmpeg (through OpenCV) takes its open and read timeouts as int32 milliseconds: 0 means "no
# timeout" (a silent server then blocks the open forever, deaf to SIGTERM), and OpenCV refuses
# anything above 2**31 - 1 ms (about 24.8 days).
MIN_TIMEOUT_S = 0.001
MAX_TIMEOUT_S = (2**31 - 1) / 1000


def timeout_ms(timeout: float, name: str = "timeout") -> int:
    """``timeout`` seconds as the whole milliseconds FFmpeg takes, never 0 (which means forever);
    a ConfigError for a value out of FFmpeg's range rather than a hang or an OpenCV traceback."""
    if not _is_real(timeout) or not MIN_TIMEOUT_S <= timeout <= MAX_TIMEOUT_S:  # nan and inf too
        raise ConfigError(
            f"{name} must be a number of seconds from {MIN_TIMEOUT_S:g} (1 ms) to {MAX_TIMEOUT_S:.3f} "
            f"(about 24.8 days: FFmpeg takes int32 milliseconds), got {timeout!r}"
        )
    return int(timeout * 1000)  # >= 1 for any timeout >= 0.001: float products are monotonic


def _is_real(value: object) -> bool:
    """A number (int, float or a NumPy scalar), not a bool or a string that looks like one."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


class StopFlag:
    """threading.Event's set, is_set and wait, with set() safe in a signal handler.

    ``rtseg run`` stops a pipeline from its SIGTERM handler, which runs on the main thread, the
    one that may be waiting here for a frame's time. Event's lock is not re-entrant: a set() from a
    handler that interrupted the waiting thread while it held that lock would deadlock."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.RLock())
        self._flag = False

    def set(self) -> None:
        with self._cond:
            self._flag = True
            self._cond.notify_all()

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        """True as soon as the flag is set, False when ``timeout`` seconds passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._flag, timeout)


@dataclass(frozen=True)
class SourceOptions:
    """How to read a source; the same options apply to every kind."""

    loop: bool = False  # restart files, folders and finite synthetic scenes at their end
    resize: tuple[int, int] | None = None  # (width, height) of delivered frames, each 1..MAX_FRAME_SIDE
    rate: float | None = None  # deliver at most this many frames per second of media (or wall) time
    realtime: bool = False  # pace media sources by the wall clock, dropping frames when behind
    reconnect: int = 5  # live sources: reopen attempts after a drop before SourceError
    timeout: float = 10.0  # network and live sources: seconds to open, and to wait for a frame (>= 1 ms)
    backoff: float = 0.5  # first reconnect delay in seconds; doubles per attempt
    backoff_max: float = 8.0  # the longest reconnect delay: the doubling stops here
    # Live network streams: FFmpeg decoder threads. Each frame thread holds a frame, a frame period
    # of latency; one decodes H.264 up to 4K and H.265 to 1080p in real time (docs/pipeline.md).
    # 0: FFmpeg's default, one per core.
    decode_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("loop", "realtime"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):  # loop="no" would otherwise mean True
                raise ConfigError(f"{name} must be True or False, got {value!r}")
        if self.resize is not None and (
            not isinstance(self.resize, (tuple, list))
            or len(self.resize) != 2
            # cv2.resize takes whole-number types only: 640.0 would fail at the first frame
            or any(not _is_count(v) or v <= 0 for v in self.resize)
        ):
            raise ConfigError(f"resize must be (width, height) with positive integers, got {self.resize!r}")
        if self.resize is not None and max(self.resize) > MAX_FRAME_SIDE:
            raise ConfigError(
                f"resize must be at most {MAX_FRAME_SIDE} pixels per side, got {tuple(self.resize)!r}"
            )
        if self.rate is not None and not (_is_real(self.rate) and 0 < self.rate < float("inf")):
            raise ConfigError(
                f"rate must be None or a positive finite number of frames per second, got {self.rate!r}"
            )
        if not _is_count(self.reconnect) or self.reconnect < 0:
            raise ConfigError(f"reconnect must be a whole number of attempts >= 0, got {self.reconnect!r}")
        timeout_ms(self.timeout)
        if not _is_count(self.decode_threads) or not 0 <= self.decode_threads <= 64:
            raise ConfigError(
                "decode_threads must be a whole number from 0 (FFmpeg's default: one per core) to 64, "
                f"got {self.decode_threads!r}"
            )
        for name in ("backoff", "backoff_max"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number of seconds, got {value!r}")
            if value < 0:
                raise ConfigError(f"{name} must be >= 0 seconds, got {value!r}")
        if self.backoff > self.backoff_max:
            raise ConfigError(
                "backoff (the first reconnect delay) must be at most backoff_max (the longest), got "
                f"backoff={self.backoff!r} and backoff_max={self.backoff_max!r}"
            )


def _is_count(value: object) -> bool:
    """A whole number (int or NumPy integer), not a bool or a float that happens to be whole."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class SourceInfo:
    """What a source is, known after opening it."""

    uri: str
    kind: str  # "video", "images", "synthetic", "camera", "stream"
    live: bool  # True when frames may be dropped to stay current (live kinds and realtime pacing)
    fps: float | None  # nominal frames per second, when known
    size: tuple[int, int] | None  # (width, height) of delivered frames, when known
    frame_count: int | None = None  # frames in one pass, when known


def redacted(uri: str) -> str:
    """What logs, errors and results show for a network URL: the password of its user info and
    the values of its query (signed URLs and stream tokens are credentials too) become ***.

    rtsp://admin:secret@cam/ is how most IP cameras are reached; logs outlive the terminal. A URL
    too malformed to parse ('rtsp://u:pw@[::1') is still redacted, for the error that names it.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return _redacted_unparsed(uri)
    if parts.scheme.lower() not in ("rtsp", "rtsps", "http", "https"):
        return uri
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username}:***@{netloc.rpartition('@')[2]}"
    query = "&".join(f"{key}=***" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def scrubbed(text: str, url: str) -> str:
    """``text`` (an exception's message, say) with the credentials of ``url`` hidden as ``redacted``
    hides them in the URL itself: a driver or a capture factory that quotes the URL it failed on
    would otherwise show its password."""
    if not url or redacted(url) == url:
        return text
    text = text.replace(url, redacted(url))
    try:
        parts = urlsplit(url)
        secrets = [parts.password or ""] + [v for _, v in parse_qsl(parts.query, keep_blank_values=True)]
    except ValueError:
        return text
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")  # shorter values would hide ordinary words too
    return text


def _redacted_unparsed(uri: str) -> str:
    """``redacted`` for a URL urlsplit refuses: password and query values hidden by pattern."""
    if uri.partition("://")[0].lower() not in ("rtsp", "rtsps", "http", "https"):
        return uri
    uri = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*):[^/?#]*@", r"\1:***@", uri)
    head, sep, query = uri.partition("?")
    if not sep:
        return uri
    return head + "?" + "&".join(f"{pair.partition('=')[0]}=***" for pair in query.split("&") if pair)


@dataclass(frozen=True)
class SourceStats:
    delivered: int
    dropped: int  # frames skipped to keep pace (live newest-frame policy, realtime, rate limiting excluded)
    reconnects: int


class Source(ABC):
    """An iterator of Frames that must be closed (use it as a context manager)."""

    info: SourceInfo

    def __init__(self, uri: str, options: SourceOptions) -> None:
        self.uri = uri
        self.options = options
        self._delivered = 0
        self._dropped = 0
        self._reconnects = 0
        self._closed = False
        self._reading = threading.Lock()  # a read and the release never overlap
        self._closing = threading.Lock()

    @abstractmethod
    def _next_frame(self) -> Frame | None:
        """The next frame, or None at the end of the stream."""

    def _release(self) -> None:  # noqa: B027 (optional hook)
        """Free the underlying device or file."""

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        with self._reading:
            if self._closed:  # as a closed file does: reading nothing would pass for an empty stream
                raise self._closed_error()
            frame = self._next_frame()
            if frame is None:
                raise StopIteration
            self._delivered += 1
            return frame

    def close(self) -> None:
        """Safe from another thread while one reads: a read in progress ends first (FFmpeg aborts
        the process when a capture is released under a read), and the next read is an error."""
        with self._closing:  # two threads closing at once release once
            if self._closed:
                return
            self._closed = True
        self._interrupt()
        with self._reading:
            self._release()

    def _interrupt(self) -> None:  # noqa: B027 (optional hook)
        """Make a read blocked waiting for a frame return now, and later reads end (the source is
        being closed, or its pipeline stopped). Called from signal handlers too: no plain Lock."""

    @property
    def files(self) -> Sequence[Path]:
        """The local files this source reads (none for cameras, streams and synthetic scenes)."""
        return ()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> SourceStats:
        return SourceStats(self._delivered, self._dropped, self._reconnects)

    def _resize(self, image: np.ndarray) -> np.ndarray:
        size = self.options.resize
        if size is None or (image.shape[1], image.shape[0]) == tuple(size):
            return image
        shrinking = size[0] < image.shape[1]
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)

    def _output_size(self, native: tuple[int, int] | None) -> tuple[int, int] | None:
        return tuple(self.options.resize) if self.options.resize is not None else native  # type: ignore[return-value]

    def __enter__(self) -> Source:
        if self._closed:  # `with src:` again after the first block closed it would read nothing
            raise self._closed_error()
        return self

    def _closed_error(self) -> SourceError:
        return SourceError(f"{self.uri}: the source is closed; open it again (open_source) to read it")

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class MediaSource(Source):
    """A source with its own timeline (media time): files, image sequences, synthetic scenes.

    Subclasses implement ``_read`` (the next image of one pass, or None at its end), ``_rewind``
    (start the next pass) and may override ``_skip`` with something cheaper than decoding.
    ``rate`` keeps the frames whose media time falls in a new 1/rate slot; ``realtime`` sleeps
    until each frame is due and skips those the consumer is already too late for.
    """

    def __init__(self, uri: str, options: SourceOptions, *, fps: float) -> None:
        super().__init__(uri, options)
        self.fps = fps
        self._media_index = -1  # index of the last frame read in this pass
        self._index_offset = 0  # frames of previous passes (loop)
        self._next_slot = 0.0  # rate limiting: earliest media time of the next kept frame
        self._time_offset = 0.0  # media time of the passes before this one (loop): time runs on
        self._clock_start: float | None = None  # realtime: perf_counter at media time 0
        self._pass_frames = 0
        self._discontinuity = False  # a new pass began: the next frame delivered says so
        # Set by close() (through _interrupt): a realtime wait for the next frame's time ends at
        # once. A sleep under the read lock held close(), and a SIGTERM, up to 1/rate seconds.
        self._stop = StopFlag()

    @abstractmethod
    def _read(self) -> np.ndarray | None: ...

    @abstractmethod
    def _rewind(self) -> bool:
        """Start over for ``loop``; False when that is impossible."""

    def _skip(self) -> bool:
        return self._read() is not None

    def _media_time(self, media_index: int) -> float:
        """Seconds into this pass of frame ``media_index``: of the frame just read (or skipped), and
        of the one after it, not read yet (rate and realtime judge it by that, before decoding it).
        Video files override it with the container's timestamps (variable frame rates)."""
        return media_index / self.fps

    def _restart(self) -> bool:
        """At the end of a pass: begin the next one if looping (and the pass was not empty)."""
        if not self.options.loop or self._pass_frames == 0:
            return False
        # Media time runs on across passes: the next pass starts one frame after this one's last,
        # so rate limiting and realtime pacing hold at the seam (a one-frame clip loops at its fps).
        # Asked before the rewind, which forgets this pass's frame times.
        duration = self._media_time(self._media_index + 1)
        if not self._rewind():
            return False
        self._index_offset += self._media_index + 1
        self._media_index = -1
        # A looped still image repeats itself: no jump (every frame would be a keyframe).
        self._discontinuity = self._discontinuity or self._pass_frames > 1
        self._pass_frames = 0
        self._time_offset += duration  # the rate's slots stay on the one timeline of every pass
        if self._clock_start is not None:
            self._clock_start += duration
        return True

    def _advance_read(self) -> np.ndarray | None:
        while True:
            image = self._read()
            if image is not None:
                self._media_index += 1
                self._pass_frames += 1
                return image
            if not self._restart():
                return None

    def _advance_skip(self) -> bool:
        while True:
            if self._skip():
                self._media_index += 1
                self._pass_frames += 1
                return True
            if not self._restart():
                return False

    def _passed_over(self, t: float, rate: float | None, period: float) -> tuple[bool, bool]:
        """Whether the frame at media time ``t`` is thinned by ``rate`` (not the first in its
        1/rate slot), or else late for realtime pacing (more than ``period`` overdue)."""
        thinned = rate is not None and self._time_offset + t + 1e-9 < self._next_slot
        late = (
            not thinned
            and self.options.realtime
            and self._clock_start is not None
            and time.perf_counter() - (self._clock_start + t) > period
        )
        return thinned, late

    def _take_slot(self, t: float, rate: float | None) -> None:
        """The frame at media time ``t`` was delivered or dropped late: the rest of its 1/rate slot
        is thinned. Left open by a late frame, every frame after it caught up counted as a drop,
        those the rate thins too (38 delivered + 38 dropped of 3 s at rate 20, which allows 60)."""
        if rate is not None:
            self._next_slot = (np.floor((self._time_offset + t) * rate + 1e-9) + 1) / rate

    def _retrieve_skipped(self) -> np.ndarray | None:
        """The image of the frame just skipped, when it can still be had (a video's grabbed frame);
        None where skipping read nothing to decode. Other sources know their frames' times ahead."""
        return None

    def _next_frame(self) -> Frame | None:
        rate = self.options.rate
        # realtime: a frame is late once it is more than one delivered frame period overdue. A rate
        # above the fps delivers every frame, at the fps: 1/rate there dropped half the frames of
        # a consumer a few ms behind (a 25 fps file at rate 1000: 30 of 60 dropped, 1 without).
        period = 1.0 / (self.fps if rate is None else min(rate, self.fps))
        while True:
            if self._stop.is_set():  # closing or stopped: not even the frames still to be skipped
                return None
            t_next = self._media_time(self._media_index + 1)
            if any(self._passed_over(t_next, rate, period)):
                # Not decoded: the consumer would never see it. That was judged by its predicted
                # time; its own is known once it is skipped, and where a variable frame rate slows
                # down the frame can open a new slot (or be on time) after all: then it is decoded.
                if not self._advance_skip():
                    return None
                t = self._media_time(self._media_index)
                thinned, late = self._passed_over(t, rate, period)
                image = None if thinned or late or t == t_next else self._retrieve_skipped()
                if image is None:
                    if late:  # a frame that had its rate slot: the slot is spent, as if delivered
                        self._dropped += 1
                        self._take_slot(t, rate)
                    continue
            else:
                image = self._advance_read()
                if image is None:
                    return None
                t = self._media_time(self._media_index)
                if self._passed_over(t, rate, period)[0]:
                    continue  # earlier than its predicted time (a variable frame rate): thinned
            self._take_slot(t, rate)
            due: float | None = None
            if self.options.realtime:
                now = time.perf_counter()
                if self._clock_start is None:
                    self._clock_start = now - t
                due = self._clock_start + t
                if due > now:
                    self._stop.wait(due - now)
            if self._stop.is_set():  # closing: no frame is delivered once close() has begun
                return None
            discontinuity, self._discontinuity = self._discontinuity, False
            handed, wall = time.perf_counter(), time.time()
            # realtime emulates a camera: a frame is captured when it is due, and a consumer that
            # takes it late waited that long for it, as for a live frame. Stamped at hand-over, a
            # late frame's latency left that wait out (p50 34.5 ms reported, 52.1 ms from due).
            captured = handed if due is None else due
            return Frame(
                image=self._resize(image),
                index=self._index_offset + self._media_index,
                timestamp=wall - (handed - captured),
                monotonic=captured,
                source=self.uri,
                position_s=t,
                discontinuity=discontinuity,
            )

    def _interrupt(self) -> None:
        self._stop.set()
