"""Cameras and network streams: a capture thread that keeps only the newest frame.

A live producer does not wait for the consumer. Reading frames only when the consumer asks
(OpenCV's default) lets the driver's or FFmpeg's buffer fill up, and the consumer then sees a
stale backlog seconds behind reality. Here a thread drains the capture as fast as frames come and
keeps one slot with the newest; the consumer always gets the freshest frame and the frame
indices show what it skipped.

A capture that stops delivering is released and reopened with exponential backoff; every
attempt is logged and counted. After ``reconnect`` failed attempts in a row the consumer gets a
SourceError. The capture is built by a factory, so a disconnect can be simulated in tests.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import cv2
import numpy as np

from ..errors import RtsegError, SourceError
from ..paths import opencv_path
from .base import Source, SourceInfo, SourceOptions, StopFlag, scrubbed, timeout_ms
from .diagnose import time_left
from .frame import Frame

log = logging.getLogger(__name__)


class Capture(Protocol):
    """The part of cv2.VideoCapture a live source uses."""

    def isOpened(self) -> bool: ...

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[], Capture]
T = TypeVar("T")

# The consumer's no-frame watchdog waits longer than ``timeout`` (by half of it, at most this), so
# that a capture's own bounded waits (FFmpeg's open and read timeouts, both ``timeout``) end first
# and a stalled stream is reconnected rather than reported as lost.
WATCHDOG_GRACE_S = 1.0
# A live frame rate at or above this is a clock, not a rate: OpenCV reports 1/time_base when a
# stream has no average rate, 90000 for most RTSP streams, and a video recorded behind it was
# made at 90000 fps (about 3600 repeats of each frame to fill its gaps).
LIVE_MAX_FPS = 1000.0
# FFmpeg's decoder threads for a live stream (the default of SourceOptions.decode_threads). Frame
# threading holds one frame per thread before the first comes out, so each thread adds a frame
# period of latency: the newest frame of a 25 fps H.264 stream was 59 ms old (median) with 1
# thread, 104 ms with 2 (FFmpeg's default here, one per core), 349 ms with 8. One thread decodes
# 1280x720 H.264 at about 240 fps, 1920x1080 at 170 and 3840x2160 at 55, but 4K H.265 at 16
# Mbit/s at only 25-28 (docs/pipeline.md): such a camera needs decode_threads=2 or more.
LIVE_DECODER_THREADS = 1
# FFmpeg reports 25 fps for every MJPEG-over-HTTP stream (the mpjpeg demuxer has no rate), and such
# a stream leaves no probe backlog to skip: its frames are not held (below) whatever they say. Over
# RTSP an MJPEG stream reports its true rate and leaves a backlog as long as the open (0.8 s): it is
# held like any other.
_MJPEG = int.from_bytes(b"MJPG", "little")
# How long close() waits for the capture thread to finish its read and release the capture: a
# frame period of any camera (a 2 fps one too), not the `timeout` of a read on a stalled stream.
RELEASE_WAIT_S = 0.5
# The caller waits for the first open in slices this long: a signal handler's exception (Ctrl-C,
# the CLI's SIGTERM) ends the wait within one.
OPEN_WAIT_SLICE_S = 0.05
# After an open, FFmpeg hands over what it buffered while probing the stream (about the open's
# length: 1.15 s of an RTSP stream), decoded within milliseconds. A read faster than this part of
# a frame period is such a backlog frame: handed over only when no newer one follows within a frame
# period (a static or slow stream still delivers it), for at most BACKLOG_MAX_S after the open, and
# for no more frames than the open lasted (plus one): a stream faster than it says (120 fps sent,
# 25 reported) had every live frame held for the whole second.
BACKLOG_READ_FRACTION = 0.25
BACKLOG_MAX_S = 1.0
# That rule fails where decoding is slow: the first reads of a 1920x1080 RTSP stream (its IDR
# frame) took 9-19 ms, over a quarter of 40 ms, and ended the backlog with a 1.15 s old frame
# delivered and ~28 stale ones after it. A stream's frames carry their media time (POS_MSEC, 0 at
# the open's first frame), which tells the backlog apart whatever the decoder's speed: a frame
# more than BACKLOG_MEDIA_MARGIN frame periods short of the open's length into the stream was
# buffered by the probe, unless its read waited for it (see _is_backlog). FFmpeg
# gives the open's first frames no media time yet (0, the first two of an RTSP stream): the first
# BACKLOG_UNTIMED_READS of them are held when the open was long enough to buffer any. A stream
# whose frames never get a media time falls back on the read time.
BACKLOG_MEDIA_MARGIN = 1.0
BACKLOG_UNTIMED_READS = 3
# FFmpeg's HLS demuxer hands over a live playlist's (.m3u8) segment in a burst as it arrives, and
# the newest-frame slot kept only each burst's last frame: 1.09 frames a second of a 25 fps
# stream. Its frames are published at their media time's pace instead (and not held as a backlog:
# the pace holds them). Pacing starts again from the frame at hand (the wall clock re-anchored)
# after each open, when it falls more than HLS_LATE_S behind (a segment that came late: catching up
# at once was the same burst) and when the next frame is due more than HLS_JUMP_S ahead (consecutive
# frames are a frame period apart: a jump in media time, not a wait).
HLS_LATE_S = 0.25
HLS_JUMP_S = 1.0


def camera_factory(index: int, props: dict[int, float]) -> CaptureFactory:
    def make() -> Capture:
        cap = cv2.VideoCapture(index)
        for prop, value in props.items():
            cap.set(prop, value)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's queue is stale frames waiting to happen
        return cap

    return make


def v4l2_factory(device: str, props: dict[int, float]) -> CaptureFactory:
    def make() -> Capture:
        if not Path(device).exists():
            raise SourceError(f"no such video device: {device}")
        cap = cv2.VideoCapture(opencv_path(device, SourceError), cv2.CAP_V4L2)
        for prop, value in props.items():
            cap.set(prop, value)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap

    return make


def open_network(url: str, timeout: float, *, threads: int | None = None) -> cv2.VideoCapture:
    """A URL through FFmpeg with its open and read timeouts set, so a silent server cannot hang us;
    ``threads`` decoder threads, or FFmpeg's default (one per core) when None.

    ``timeout_ms`` refuses what FFmpeg would misread: under 1 ms truncates to 0, "no timeout"."""
    ms = timeout_ms(timeout)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    if threads is not None:
        params += [cv2.CAP_PROP_N_THREADS, threads]
    return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)


def network_factory(url: str, timeout: float, threads: int = LIVE_DECODER_THREADS) -> CaptureFactory:
    """``threads`` FFmpeg decoder threads (0: FFmpeg's default, one per core)."""

    def make() -> Capture:
        return open_network(url, timeout, threads=threads or None)

    return make


class LiveSource(Source):
    """A camera or stream read on its own thread; ``next()`` returns the newest frame."""

    def __init__(
        self,
        uri: str,
        kind: str,
        factory: CaptureFactory,
        options: SourceOptions,
        *,
        hint: str = "",
        diagnose: Callable[[float], str | None] | None = None,
        secret_url: str = "",
        ffmpeg: bool = False,
    ) -> None:
        """``ffmpeg``: a network stream read through FFmpeg with its read timeout, whose decoder
        hands over a frame it held when that timeout fires (see ``_capture_step``)."""
        super().__init__(uri, options)
        self._ffmpeg = ffmpeg
        url = urlsplit(uri)
        self._paced = ffmpeg and url.path.lower().endswith(".m3u8")  # see HLS_LATE_S
        self._anchor: float | None = None  # perf_counter time of media time 0 when paced
        self._secret_url = secret_url  # the URL with its credentials: hidden in whatever is said
        self._factory = factory
        self._hint = hint
        self._diagnose = diagnose  # called with the seconds left of the failed open's timeout
        self._open_started = 0.0  # perf_counter when the last open began (set by _open)
        # FFmpeg's open cannot be interrupted: on this thread it held Ctrl-C for the whole open
        # timeout on a server that accepts and never answers.
        cap = open_interruptibly(self._open, self._release_unread)
        if cap is None:
            raise SourceError(f"cannot open {uri}{self._why()}")
        fps = _get(cap, cv2.CAP_PROP_FPS)
        if fps != 0 and not (math.isfinite(fps) and 0 < fps < LIVE_MAX_FPS):  # 0: does not say
            log.warning("%s reports a frame rate of %g; taken as unknown", uri, fps)
            fps = 0.0
        native = (
            int(_get(cap, cv2.CAP_PROP_FRAME_WIDTH)),
            int(_get(cap, cv2.CAP_PROP_FRAME_HEIGHT)),
        )
        self.info = SourceInfo(
            uri=uri,
            kind=kind,
            live=True,
            fps=fps or None,
            size=self._output_size(native if min(native) > 0 else None),
        )
        self._frame_count = _frame_count(cap)
        self._cond = threading.Condition()
        self._latest: tuple[np.ndarray, int, float, float] | None = None
        self._ready_at = 0.0  # perf_counter time from which the consumer may take _latest
        # 0: no backlog is told apart (the rate is unknown, or MJPEG over HTTP's is a guess: see
        # _MJPEG; MJPEG over RTSP says its rate and leaves a probe's backlog like any RTSP stream)
        guessed = _is_mjpeg(cap) and url.scheme.lower() in ("http", "https")
        self._period = 1.0 / fps if fps and not guessed else 0.0
        self._backlog_until = 0.0  # perf_counter time the backlog after the last open ends at latest
        self._backlog_left = 0  # frames the last open can have buffered, not yet read
        self._open_took = 0.0  # seconds the last open took: about what its probe buffered
        self._reads_since_open = 0
        self._media_start: float | None = None  # POS_MSEC (s) of the open's first frame
        self._timed = False  # a frame since the open had a media time past the first's
        self._skip_backlog()
        self._captured = 0
        self._last_index = -1
        self._reopened_at = -1  # index of the first frame captured after the last reconnect
        self._next_due = 0.0  # perf_counter time of the rate's next slot (0: none yet)
        self._before_due = -1  # index of the last frame captured before that slot
        self._attempts = 0
        self._opened_empty = 0  # of those attempts, reopens that gave no frame before failing again
        self._heartbeat = time.perf_counter()
        self._error: SourceError | None = None
        self._finished = False
        self._stop = StopFlag()  # set by close() and Pipeline.stop() (a signal handler)
        self._thread = threading.Thread(
            target=_capture, args=(weakref.ref(self), cap), name=f"source:{uri}", daemon=True
        )
        self._thread.start()

    def _said(self, exc: BaseException) -> str:
        return scrubbed(str(exc), self._secret_url)

    def _why(self) -> str:
        """': reason' for a failed open: what the diagnosis found, else the hint. The diagnosis
        gets what the open left of ``timeout``, none once FFmpeg's open timed out: the wait stays
        the ``timeout`` the user asked for and the hint says."""
        left = time_left(self.options.timeout, self._open_started)
        reason = self._diagnose(left) if self._diagnose is not None and left is not None else None
        reason = reason or self._hint
        return f": {reason}" if reason else ""

    def _open(self) -> Capture | None:
        """A capture that opened, or None when the device or server said no (the hint's case)."""
        self._open_started = time.perf_counter()
        try:
            cap = self._factory()
        except RtsegError:
            raise
        except Exception as exc:
            # An exception is not "nothing answered": shown as the hint, a bad parameter or a
            # driver bug sent users looking for a network problem. Reconnects log it and retry.
            raise SourceError(f"cannot open {self.uri}: {type(exc).__name__}: {self._said(exc)}") from exc
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None
        return cap

    def _skip_backlog(self) -> None:
        """Tell the backlog the open just made leaves apart from live frames (capture thread)."""
        self._anchor = None
        if self._period and not self._paced:
            now = time.perf_counter()
            self._backlog_until = now + BACKLOG_MAX_S
            self._open_took = now - self._open_started
            self._backlog_left = math.ceil(self._open_took / self._period) + 1
            self._reads_since_open = 0
            self._media_start = None
            self._timed = False

    def _is_backlog(self, cap: Capture, took: float, now: float) -> bool:
        """Whether the frame just read (in ``took`` s) was buffered by the last open's probe."""
        if now >= self._backlog_until:
            return False
        self._reads_since_open += 1
        if self._ffmpeg:
            media = _get(cap, cv2.CAP_PROP_POS_MSEC) / 1000.0
            if not math.isfinite(media):
                media = 0.0
            if self._media_start is None:
                self._media_start = media
            media -= self._media_start
            self._timed = self._timed or media > 0
            buffered = self._open_took - BACKLOG_MEDIA_MARGIN * self._period
            if self._timed:
                # A read that waited for its frame is live, whatever the media time: the open's
                # length also counts its handshake (DNS, connect, DESCRIBE ... PLAY, a slow link),
                # which buffers nothing, and live frames behind a 2.2 s open were held for 1 s.
                return media < buffered and took < BACKLOG_READ_FRACTION * self._period
            if self._reads_since_open <= BACKLOG_UNTIMED_READS and buffered > 0:
                return True  # the open's first frames, before FFmpeg gives them a media time
        if took < BACKLOG_READ_FRACTION * self._period and self._backlog_left > 0:
            self._backlog_left -= 1
            return True
        return False

    def _pace(self, cap: Capture, now: float) -> float:
        """Wait until the frame just read is due by its media time (see HLS_LATE_S); the time."""
        media = _get(cap, cv2.CAP_PROP_POS_MSEC) / 1000.0
        if not math.isfinite(media):
            return now
        due = (self._anchor if self._anchor is not None else now) + media
        jump = min(HLS_JUMP_S, self.options.timeout / 2)  # a wait the watchdog would not outlast
        if self._anchor is None or not -HLS_LATE_S <= due - now <= jump:
            self._anchor = now - media
            return now
        if due > now:
            self._stop.wait(due - now)
        return time.perf_counter()

    def _release_unread(self, cap: Capture | None) -> None:
        """Release a capture nobody will read (an open abandoned by Ctrl-C); a failure is logged."""
        if cap is None:
            return
        try:
            cap.release()
        except Exception as exc:
            log.warning("%s: releasing the capture failed: %s", self.uri, self._said(exc))

    def _capture_step(self, cap: Capture) -> tuple[Capture | None, bool]:
        """One read: (the capture to hold, whether to go on)."""
        started = time.perf_counter()
        try:
            ok, image = cap.read()
        except Exception as exc:  # treated like a failed read: reconnect
            log.debug("%s: read failed: %s", self.uri, self._said(exc))
            ok, image = False, None
        now = time.perf_counter()
        if self._stop.is_set():
            return cap, False
        if self._ffmpeg and ok and image is not None and now - started >= self.options.timeout:
            # FFmpeg's read timeout fired, and the read still returned a frame its decoder held
            # (one per decoder thread): a frame `timeout` seconds old, not a new one. Delivered as
            # new, each such frame also fed the watchdog, and a frozen server was reconnected only
            # after (decoder threads + 1) timeouts. It is a failed read: reconnect. (Not for a
            # camera: a slow read there, a 1 fps camera with timeout 1, returns a new frame.)
            log.debug(
                "%s: the read took %.2f s (timeout %g s): a stall",
                self.uri,
                now - started,
                self.options.timeout,
            )
            ok, image = False, None
        if ok and image is not None and self._paced:
            now = self._pace(cap, now)
            if self._stop.is_set():
                return cap, False
        if ok and image is not None:
            ready = now
            if self._backlog_until:
                if self._is_backlog(cap, now - started, now):
                    ready = now + self._period  # buffered before the open returned: hold it back
                else:
                    self._backlog_until = 0.0  # live from here on
            with self._cond:
                self._attempts = self._opened_empty = 0
                if now < self._next_due:
                    self._before_due = self._captured
                self._latest = (image, self._captured, time.time(), now)
                self._ready_at = ready
                self._captured += 1
                self._heartbeat = now
                self._cond.notify_all()
            return cap, True
        if self._at_end(cap):
            log.info("%s: end of stream after %d frames", self.uri, self._frame_count)
            return cap, False
        cap.release()
        cap = self._reconnect()
        return cap, cap is not None

    def _capture_failed(self, exc: Exception) -> None:
        """A bug or a driver failure: the consumer must hear of it, not see an end."""
        said = self._said(exc)
        log.error("%s: capture thread failed: %s: %s", self.uri, type(exc).__name__, said)
        with self._cond:
            self._error = SourceError(f"{self.uri}: capture thread failed: {type(exc).__name__}: {said}")

    def _capture_ended(self) -> None:
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def _reconnect(self) -> Capture | None:
        limit = self.options.reconnect
        while self._attempts < limit:
            delay = min(self.options.backoff * 2 ** min(self._attempts, 30), self.options.backoff_max)
            self._attempts += 1
            log.warning(
                "%s: no frame; reconnecting in %.2f s (attempt %d of %d)",
                self.uri,
                delay,
                self._attempts,
                limit,
            )
            with self._cond:  # trying is progress: the consumer's timeout counts from after the wait
                self._heartbeat = time.perf_counter() + delay
            if self._stop.wait(delay):
                return None
            with self._cond:
                self._heartbeat = time.perf_counter()
            try:
                cap = self._open()
            except SourceError as exc:
                log.warning("%s: %s", self.uri, exc)
                cap = None
            if cap is not None and self._stop.is_set():
                return cap  # closed while it opened: not a reconnect; the capture thread releases it
            if cap is not None:
                self._frame_count = _frame_count(cap)
                with self._cond:
                    self._opened_empty += 1  # until its first frame
                    self._reconnects += 1
                    self._heartbeat = time.perf_counter()
                    self._reopened_at = self._captured
                self._skip_backlog()
                log.warning("%s: reconnected (reconnect #%d)", self.uri, self._reconnects)
                return cap
        if self._opened_empty:
            # "attempts failed" sent users looking for a server that was up: it opened, and then
            # sent no frame (a stalled encoder, a camera slower than the timeout)
            error = SourceError(
                f"{self.uri}: lost; {limit} reconnect attempt(s), {self._opened_empty} of which opened "
                f"but gave no frame within {self.options.timeout:g} s (a stalled stream? a longer "
                "timeout for a slow one)"
            )
        else:
            error = SourceError(f"{self.uri}: lost, and {limit} reconnect attempt(s) failed{self._why()}")
        with self._cond:
            self._error = error
            self._cond.notify_all()
        return None

    def _next_frame(self) -> Frame | None:
        rate = self.options.rate
        thinned_up_to = self._last_index  # frames captured while waiting for the rate's slot
        if rate is not None:
            wait = self._next_due - time.perf_counter()
            if wait > 0 and self._stop.wait(wait):  # closed while waiting for the rate's slot
                return None
            with self._cond:
                # a consumer past its slot skipped what came after it: drops, not thinning
                thinned_up_to = self._before_due
        timeout = self.options.timeout
        patience = timeout + min(timeout / 2, WATCHDOG_GRACE_S)
        with self._cond:
            while True:
                if self._stop.is_set():  # closed (perhaps from another thread): no frame after that
                    return None
                slice_s = 0.05
                if self._latest is not None and self._latest[1] > self._last_index:
                    held = self._ready_at - time.perf_counter()  # > 0: a backlog frame, for now
                    if held <= 0 or self._error is not None or self._finished:
                        break
                    slice_s = min(slice_s, held)
                if self._error is not None:
                    raise self._error
                if self._finished:
                    return None
                if time.perf_counter() - self._heartbeat > patience:
                    attempt = self._attempts  # > 0: a reopen hangs (a server that accepts and is silent)
                    during = (
                        f" (lost; reconnect attempt {attempt} of {self.options.reconnect} did not open "
                        "in time)"
                        if attempt
                        else ""
                    )
                    raise SourceError(f"{self.uri}: no frame for {self.options.timeout:g} s{during}")
                self._cond.wait(slice_s)
            image, index, wall, mono = self._latest
            self._latest = None  # the consumer owns it now
            first = self._last_index < 0
            if rate is not None:  # set here, under the lock: what is captured from now on is newer
                now = time.perf_counter()
                self._next_due = now + 1.0 / rate if first else max(self._next_due + 1.0 / rate, now)
                self._before_due = index
            # The first frame taken from after a reconnect, whichever of them the newest-frame
            # policy lets through; the frame captured before the drop, if still waiting, is not.
            discontinuity = self._last_index < self._reopened_at <= index
        # Skipped frames the rate asked to skip are thinned, not dropped (as for files): dropped are
        # those that arrived after this frame's slot and were replaced before it was taken. The
        # frames captured before the first one taken are none: the consumer was not reading yet
        # (an engine loading counted its seconds of capture as drops).
        if not first:
            self._dropped += index - max(self._last_index, min(thinned_up_to, index - 1)) - 1
        self._last_index = index
        return Frame(self._resize(image), index, wall, mono, self.uri, discontinuity=discontinuity)

    def _interrupt(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def _release(self) -> None:
        """Stop the capture thread; it releases the capture itself, after its read returns.

        A read or a reopen blocked on a stalled server lasts up to ``timeout``: waiting it out kept
        Ctrl-C and SIGTERM from ending a run for that long. A read ended by a normal frame is
        waited for, so that a camera is free again when close() returns."""
        self._stop.set()
        self._thread.join(RELEASE_WAIT_S)
        if self._thread.is_alive():
            log.info(
                "%s: the capture thread is still in a read or an open; it releases the capture when "
                "that returns",
                self.uri,
            )

    def _at_end(self, cap: Capture) -> bool:
        """A finite stream (an HLS recording, a video at a URL without a file extension) read to its end."""
        count = self._frame_count
        return count is not None and _get(cap, cv2.CAP_PROP_POS_FRAMES) >= count


def _capture(source_ref: weakref.ReferenceType[LiveSource], cap: Capture | None) -> None:
    """The capture thread. It holds the source only while it reads or reconnects, so a source
    dropped without close() is collected, and its thread then ends and releases the device."""
    source: LiveSource | None = None
    try:
        go_on = cap is not None
        while go_on and cap is not None:
            source = source_ref()
            if source is None or source._stop.is_set():
                break
            cap, go_on = source._capture_step(cap)
            source = None
    except Exception as exc:
        if source is not None:
            source._capture_failed(exc)
    finally:
        if source is None:
            source = source_ref()
        if cap is not None:
            try:
                cap.release()
            except Exception as exc:
                uri = source.uri if source is not None else "a dropped live source"
                said = source._said(exc) if source is not None else type(exc).__name__
                log.warning("%s: releasing the capture failed: %s", uri, said)
        if source is not None:
            source._capture_ended()


def open_interruptibly(open_: Callable[[], T], release: Callable[[T], None]) -> T:
    """``open_()`` on a worker thread, waited for in short slices, so that Ctrl-C (or the
    exception the CLI's SIGTERM handler raises) ends the wait at once, where an open that blocks
    in C would hold it until it returns. An abandoned open runs on to its own timeout and then
    ``release``s what it opened (unless None); what ``open_`` raises is raised here."""
    lock = threading.Lock()
    done = threading.Event()
    outcome: list[tuple[T | None, BaseException | None]] = []
    abandoned = False

    def work() -> None:
        try:
            result: tuple[T | None, BaseException | None] = (open_(), None)
        except BaseException as exc:
            result = (None, exc)
        with lock:
            if not abandoned:
                outcome.append(result)
                done.set()
                return
        if result[0] is not None:
            release(result[0])

    threading.Thread(target=work, name="rtseg-open", daemon=True).start()
    try:
        while not done.wait(OPEN_WAIT_SLICE_S):
            pass
    except BaseException:
        with lock:
            abandoned = True
            opened = outcome[0][0] if outcome else None
        if opened is not None:
            release(opened)
        raise
    opened, error = outcome[0]
    if error is not None:
        raise error
    return opened  # type: ignore[return-value]  # T, None included when open_ returned it


def _frame_count(cap: Any) -> int | None:
    """Frames in a finite stream; None for live ones (FFmpeg reports 0 or a negative count)."""
    count = _get(cap, cv2.CAP_PROP_FRAME_COUNT)
    return int(count) if 0 < count < 2**31 else None


def _is_mjpeg(cap: Any) -> bool:
    fourcc = _get(cap, cv2.CAP_PROP_FOURCC)
    return math.isfinite(fourcc) and int(fourcc) == _MJPEG


def _get(cap: Any, prop: int) -> float:
    getter = getattr(cap, "get", None)
    if getter is None:
        return 0.0
    try:
        return float(getter(prop))
    except Exception:
        return 0.0
