"""Live sources without hardware: captures are fakes injected through ``capture_factory``."""

from __future__ import annotations

import gc
import http.server
import itertools
import logging
import re
import socket
import threading
import time

import cv2
import numpy as np
import pytest

from rtseg.errors import ConfigError, SourceError
from rtseg.source import open_source
from rtseg.source.base import SourceOptions
from rtseg.source.diagnose import http_problem
from rtseg.source.live import LiveSource


class FakeCamera:
    """Delivers ``frames`` frames (pixel value = a global counter), then fails like an unplugged camera."""

    def __init__(
        self, counter: list[int], frames: int | None, period: float = 0.002, opened: bool = True
    ) -> None:
        self.counter = counter
        self.left = frames
        self.period = period
        self.opened = opened
        self.released = threading.Event()

    def isOpened(self) -> bool:
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(self.period)
        if self.left is not None:
            if self.left <= 0:
                return False, None
            self.left -= 1
        self.counter[0] += 1
        return True, np.full((8, 8, 3), self.counter[0] % 256, np.uint8)

    def release(self) -> None:
        self.released.set()


class Factory:
    """Hands out prepared captures in order, then unopened ones."""

    def __init__(self, captures: list[FakeCamera]) -> None:
        self.captures = captures
        self.calls = 0

    def __call__(self) -> FakeCamera:
        self.calls += 1
        if self.captures:
            return self.captures.pop(0)
        return FakeCamera([0], 0, opened=False)


def test_disconnect_recovers_with_backoff_and_is_reported(caplog) -> None:
    counter = [0]
    first = FakeCamera(counter, frames=5)
    factory = Factory([first, FakeCamera(counter, 0, opened=False), FakeCamera(counter, frames=None)])
    with (
        caplog.at_level(logging.WARNING, logger="rtseg.source.live"),
        open_source("camera://0", capture_factory=factory, reconnect=3, backoff=0.02) as src,
    ):
        assert src.info.live and src.info.kind == "camera"
        frames = [f for _, f in zip(range(12), src, strict=False)]
        stats = src.stats
    assert stats.reconnects == 1
    assert factory.calls == 3  # first open, one failed reopen, one good reopen
    assert first.released.is_set()
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices))  # fresh frames only, in capture order
    # The first frame taken from the reopened camera (its images count on from 6) marks the jump.
    after = [f for f in frames if f.image[0, 0, 0] > 5]
    assert [f.discontinuity for f in frames] == [f is after[0] for f in frames]
    assert "reconnected" in caplog.text
    # the delay doubles per attempt: 0.02 s before the failed reopen, 0.04 s before the good one
    assert _reconnect_waits(caplog.text) == [("0.02", "1 of 3"), ("0.04", "2 of 3")]


def _reconnect_waits(text: str) -> list[tuple[str, str]]:
    """(delay, "attempt of limit") of each reconnect the live source logged."""
    return re.findall(r"reconnecting in ([0-9.]+) s \(attempt (\d+ of \d+)\)", text)


def test_the_reconnect_delay_stops_growing_at_backoff_max(caplog) -> None:
    counter = [0]
    unopened = [FakeCamera(counter, 0, opened=False) for _ in range(3)]
    factory = Factory([FakeCamera(counter, frames=2), *unopened, FakeCamera(counter, frames=None)])
    options = SourceOptions(reconnect=5, backoff=0.02, backoff_max=0.05)
    with (
        caplog.at_level(logging.WARNING, logger="rtseg.source.live"),
        LiveSource("camera://0", "camera", factory, options) as src,
    ):
        frames = [f for _, f in zip(range(6), src, strict=False)]
        stats = src.stats
    assert len(frames) == 6 and stats.reconnects == 1 and factory.calls == 5
    waits = [("0.02", "1 of 5"), ("0.04", "2 of 5"), ("0.05", "3 of 5"), ("0.05", "4 of 5")]
    assert _reconnect_waits(caplog.text) == waits


def test_each_outage_gets_the_whole_reconnect_allowance(caplog) -> None:
    # The attempt count starts again after a good frame: three outages, each over at the first
    # reopen, are within reconnect=2 (counted over the stream's life, the third gave up).
    counter = [0]
    outages = [FakeCamera(counter, frames=3) for _ in range(3)]
    factory = Factory([*outages, FakeCamera(counter, frames=None)])
    with (
        caplog.at_level(logging.WARNING, logger="rtseg.source.live"),
        open_source("camera://0", capture_factory=factory, reconnect=2, backoff=0.02) as src,
    ):
        # at most 9 frames come before the last reopen: the 15th is from after all three outages
        frames = [f for _, f in zip(range(15), src, strict=False)]
        stats = src.stats
    assert len(frames) == 15 and stats.reconnects == 3
    assert _reconnect_waits(caplog.text) == [("0.02", "1 of 2")] * 3


def test_gives_up_after_the_limit_with_a_source_error() -> None:
    factory = Factory([FakeCamera([0], frames=3)])
    start = time.perf_counter()
    with (
        open_source("camera://1", capture_factory=factory, reconnect=2, backoff=0.01) as src,
        pytest.raises(SourceError, match="2 reconnect attempt"),
    ):
        for _ in src:
            pass
    assert time.perf_counter() - start < 2.0
    assert factory.calls == 3


def test_slow_consumer_gets_the_newest_frame_not_a_backlog() -> None:
    counter = [0]
    factory = Factory([FakeCamera(counter, frames=None, period=0.002)])
    with open_source("camera://0", capture_factory=factory) as src:
        staleness = []
        for _, frame in zip(range(6), src, strict=False):
            staleness.append(counter[0] - (int(frame.image[0, 0, 0])))
            time.sleep(0.05)  # a consumer 25x slower than the camera
        stats = src.stats
    assert stats.dropped > 50  # ~25 frames captured per frame consumed were never delivered
    # At the moment it is handed over, a frame is at most a few captures old (mod 256 wrap aside).
    assert all(s % 256 <= 3 for s in staleness)


def test_frames_captured_before_the_first_read_are_not_counted_as_dropped() -> None:
    # `rtseg run` opens the source before the engine loads: the seconds of capture that took were
    # reported as frames dropped at the source (55 for a 10-frame run, 1749 for a cold build).
    factory = Factory([FakeCamera([0], frames=None, period=0.002)])
    with open_source("camera://0", capture_factory=factory) as src:
        time.sleep(0.3)  # the engine loads
        first = next(src)
        assert first.index > 20 and src.stats.dropped == 0
        time.sleep(0.1)  # a slow frame: what the camera captured meanwhile is dropped
        second = next(src)
        stats = src.stats
    assert stats.dropped == second.index - first.index - 1 > 10


def test_no_frame_within_timeout_is_an_error() -> None:
    class Stalled(FakeCamera):
        def read(self):
            self.released.wait(1.0)
            return False, None

    factory = Factory([Stalled([0], None)])
    start = time.perf_counter()
    with (
        open_source("camera://0", capture_factory=factory, timeout=0.3, reconnect=0) as src,
        pytest.raises(SourceError, match=r"no frame for 0\.3 s"),
    ):
        next(src)
    assert time.perf_counter() - start < 2.5


def test_a_reopen_that_hangs_says_it_was_reconnecting() -> None:
    """A server that accepts the connection and never answers: the reopen blocks past the timeout,
    and the error says the stream was lost and which attempt hung, not only 'no frame'."""
    hung = threading.Event()

    class HangingFactory(Factory):
        def __call__(self) -> FakeCamera:
            if self.calls >= 1:
                hung.wait(5.0)  # FFmpeg's open, waiting on a silent server
            return super().__call__()

    factory = HangingFactory([FakeCamera([0], frames=2)])
    try:
        with (
            open_source(
                "rtsp://cam.local/s", capture_factory=factory, timeout=0.3, reconnect=3, backoff=0.01
            ) as src,
            pytest.raises(
                SourceError, match=r"no frame for 0\.3 s \(lost; reconnect attempt 1 of 3 did not open"
            ),
        ):
            for _ in src:
                pass
    finally:
        hung.set()


def test_failed_first_open_is_immediate_and_clear() -> None:
    with pytest.raises(SourceError, match="cannot open camera://7") as err:
        open_source("camera://7", capture_factory=Factory([]))
    assert "camera 7 connected" in str(err.value)


def test_close_stops_the_capture_thread() -> None:
    cam = FakeCamera([0], frames=None)
    src = open_source("camera://0", capture_factory=Factory([cam]))
    next(src)
    src.close()
    assert cam.released.wait(1.0)
    with pytest.raises(SourceError, match=r"camera://0: the source is closed"):
        next(src)


def test_a_source_dropped_without_close_ends_its_thread_and_releases_the_camera() -> None:
    # The thread used to hold the source: a dropped source was never collected, and its camera
    # stayed open and read for the life of the process.
    cam = FakeCamera([0], frames=None)
    src = open_source("camera://0", capture_factory=Factory([cam]))
    next(src)
    thread = src._thread
    del src
    gc.collect()
    assert cam.released.wait(2.0)
    thread.join(2.0)
    assert not thread.is_alive()


class FFmpegStalled(FakeCamera):
    """A network stream that goes silent: read blocks until FFmpeg's read timeout, then fails."""

    def __init__(self, stall: float) -> None:
        super().__init__([0], frames=None)
        self.stall = stall

    def read(self):
        self.released.wait(self.stall)
        return False, None


def test_a_stalled_stream_is_reconnected_not_reported_lost(caplog) -> None:
    # FFmpeg's read timeout is `timeout` too, and fires a little after it: the watchdog waits longer.
    counter = [0]
    factory = Factory([FFmpegStalled(stall=1.1), FakeCamera(counter, frames=None)])
    with (
        caplog.at_level(logging.WARNING, logger="rtseg.source.live"),
        open_source("rtsp://127.0.0.1:1/x", capture_factory=factory, timeout=1.0, backoff=0.01) as src,
    ):
        frame = next(src)
        assert src.stats.reconnects == 1
    assert frame.image.shape == (8, 8, 3)
    assert "reconnected" in caplog.text


class FFmpegFrozen(FakeCamera):
    """A server frozen with the connection open, read through FFmpeg with two decoder threads:
    after ``frames`` good frames each read waits out the read timeout and still returns a frame
    the decoder held (pixel 255), twice, then fails."""

    def __init__(self, frames: int, stall: float) -> None:
        super().__init__([0], frames=None)
        self.good = frames
        self.stall = stall
        self.held = 2
        self.frozen_at: float | None = None

    def read(self):
        if self.good > 0:
            self.good -= 1
            return super().read()
        if self.frozen_at is None:
            self.frozen_at = time.perf_counter()
        self.released.wait(self.stall)
        if self.held > 0:
            self.held -= 1
            return True, np.full((8, 8, 3), 255, np.uint8)
        return False, None


def test_a_read_that_took_the_timeout_is_a_stall_not_a_new_frame() -> None:
    # The frames FFmpeg's decoder held were delivered as new ones, 1x and 2x timeout old, and each
    # fed the watchdog: the reconnect came after three timeouts instead of one.
    frozen = FFmpegFrozen(frames=3, stall=0.5)
    factory = Factory([frozen, FakeCamera([100], frames=None)])
    with open_source("rtsp://127.0.0.1:1/x", capture_factory=factory, timeout=0.5, backoff=0.01) as src:
        values = []
        while not values or values[-1] <= 100:
            values.append(int(next(src).image[0, 0, 0]))
        fresh_at = time.perf_counter()
        assert src.stats.reconnects == 1
    assert 255 not in values
    assert frozen.frozen_at is not None and fresh_at - frozen.frozen_at < 0.9  # 0.5 s + backoff


def test_a_camera_slower_than_the_timeout_still_delivers_its_frames() -> None:
    # The stall rule is FFmpeg's: a camera's slow read is a new frame. Applied to cameras, a
    # 1 fps camera with timeout 1 delivered nothing and ended "lost, and 2 reconnect attempt(s)
    # failed" though every reopen worked.
    counter = [0]
    factory = Factory([FakeCamera(counter, frames=None, period=0.3)])
    with open_source("camera://0", capture_factory=factory, timeout=0.25, reconnect=2, backoff=0.01) as src:
        values = [int(next(src).image[0, 0, 0]) for _ in range(3)]
        assert src.stats.reconnects == 0
    assert values == [1, 2, 3]


def test_reopens_that_give_no_frame_are_not_called_failed_attempts() -> None:
    frozen = [FFmpegFrozen(frames=1, stall=0.2) for _ in range(3)]
    for f in frozen[1:]:
        f.good = 0
    with open_source(
        "rtsp://127.0.0.1:1/x", capture_factory=Factory(frozen), timeout=0.2, reconnect=2, backoff=0.01
    ) as src:
        next(src)
        with pytest.raises(SourceError) as caught:
            while True:
                next(src)
    message = str(caught.value)
    assert "2 reconnect attempt(s), 2 of which opened but gave no frame within 0.2 s" in message
    assert "failed" not in message


def test_a_backoff_longer_than_the_timeout_keeps_the_consumer_waiting(monkeypatch) -> None:
    monkeypatch.setattr("rtseg.source.live.WATCHDOG_GRACE_S", 0.0, raising=False)
    counter = [0]
    factory = Factory([FakeCamera(counter, frames=1), FakeCamera(counter, frames=None)])
    with open_source("camera://0", capture_factory=factory, timeout=0.2, backoff=0.5) as src:
        next(src)
        start = time.perf_counter()
        next(src)  # waits out the 0.5 s reconnect delay instead of "no frame for 0.2 s"
        assert time.perf_counter() - start >= 0.45
        assert src.stats.reconnects == 1


class FiniteStream(FakeCamera):
    """A video file served over HTTP: FFmpeg knows its frame count and position."""

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return 5.0
        if prop == cv2.CAP_PROP_POS_FRAMES:
            return float(self.counter[0])
        return 0.0


def test_a_finite_stream_ends_at_its_last_frame_without_reconnecting() -> None:
    counter = [0]
    factory = Factory([FiniteStream(counter, frames=5, period=0.01), FiniteStream([0], frames=5)])
    with open_source("http://127.0.0.1:1/live", capture_factory=factory, reconnect=3) as src:
        frames = list(src)
        stats = src.stats
    assert frames and stats.delivered + stats.dropped == 5 - frames[0].index
    assert stats.reconnects == 0 and factory.calls == 1


@pytest.fixture
def web_server(serve_http):  # type: ignore[no-untyped-def]
    """A local web server: /page is HTML, anything else 404; yields its base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/page":
                body = b"<html><body>camera login</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_error(404, "Not Found")

        def log_message(self, *args: object) -> None:
            pass

    with serve_http(Handler) as url:
        yield url


def test_http_error_and_web_page_are_named(web_server: str) -> None:
    with pytest.raises(SourceError, match="answered HTTP 404 Not Found"):
        open_source(f"{web_server}/stream.mjpg", timeout=2)
    with pytest.raises(SourceError, match=r"text/html .*not a video stream"):
        open_source(f"{web_server}/page", timeout=2)
    # credentials in the URL are sent, and do not break the question
    assert "404" in (http_problem(f"http://user:pw@{web_server[len('http://') :]}/x", 2) or "")
    assert http_problem("http://127.0.0.1:1/", 1) == (
        "the connection to 127.0.0.1:1 was refused: is the server running, on that port?"
    )


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_a_host_name_that_does_not_resolve_is_named(scheme: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # it said "nothing answered at cam.invalid:the default port within 2 s ... check credentials"
    def no_address(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_address)

    class Closed:
        def isOpened(self) -> bool:
            return False

        def release(self) -> None:
            pass

    with pytest.raises(SourceError) as caught:
        open_source(f"{scheme}://cam.invalid/stream", timeout=2, capture_factory=Closed)
    assert "the host name cam.invalid does not resolve (Name or service not known)" in str(caught.value)


def test_the_hint_names_the_schemes_default_port() -> None:
    class Closed:
        def isOpened(self) -> bool:
            return False

        def release(self) -> None:
            pass

    with pytest.raises(SourceError, match=r"nothing answered at 127\.0\.0\.1:554 within"):
        open_source("rtsp://127.0.0.1/stream", timeout=0.5, capture_factory=Closed)
    with pytest.raises(SourceError, match=r"nothing answered at \[::1\]:8554 within"):  # not ::1:8554
        open_source("rtsp://[::1]:8554/stream", timeout=0.5, capture_factory=Closed)


def test_a_bare_camera_number_is_the_camera_uri_with_the_same_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir("/")  # no file named "0" here
    counter = [0]
    factory = Factory([FakeCamera(counter, frames=None, period=0.002)])
    with open_source("0", capture_factory=factory, resize=(32, 24)) as src:
        frame = next(src)
        assert src.info.uri == "camera://0" and src.info.live
    assert factory.calls == 1 and frame.image.shape == (24, 32, 3)


def test_a_camera_password_is_never_shown(caplog) -> None:
    url = "rtsp://admin:s3cret@127.0.0.1:1/stream?auth=tok3n"
    counter = [0]
    factory = Factory([FakeCamera(counter, frames=3), FakeCamera(counter, frames=None)])
    with caplog.at_level(logging.INFO), open_source(url, capture_factory=factory, backoff=0.01) as src:
        frames = [next(src) for _ in range(6)]
        shown = {src.info.uri, repr(src), *(f.source for f in frames)}
    assert src.info.uri == "rtsp://admin:***@127.0.0.1:1/stream?auth=***"
    assert "reconnected" in caplog.text
    assert not any("s3cret" in s or "tok3n" in s for s in shown | {caplog.text})
    with pytest.raises(SourceError) as err:
        open_source(url, capture_factory=Factory([]))
    assert "admin:***@127.0.0.1" in str(err.value) and "s3cret" not in str(err.value)


def test_a_driver_error_quoting_the_url_does_not_show_its_password(caplog) -> None:
    """The URL was hidden everywhere, but not inside the text of an exception that quotes it."""
    url = "rtsp://admin:s3cret@cam.local:554/live?token=TOPSECRET"

    class Quoting(FakeCamera):
        def read(self):
            raise RuntimeError(f"read error on {url}")

    def refusing() -> FakeCamera:
        raise RuntimeError(f"could not connect to {url} (user admin, password s3cret)")

    with pytest.raises(SourceError) as err:
        open_source(url, capture_factory=refusing)
    assert "s3cret" not in str(err.value) and "TOPSECRET" not in str(err.value)
    assert "rtsp://admin:***@cam.local:554/live?token=***" in str(err.value)
    with (
        caplog.at_level(logging.DEBUG, logger="rtseg.source.live"),
        open_source(url, capture_factory=Factory([Quoting([0], None)]), reconnect=1, backoff=0.01) as src,
        pytest.raises(SourceError),
    ):
        next(src)
    assert "read error on rtsp://admin:***@" in caplog.text
    assert "s3cret" not in caplog.text and "TOPSECRET" not in caplog.text


def test_an_exception_while_reconnecting_is_logged_and_retried(caplog) -> None:
    """A reopen that raises is a failed attempt, said at WARNING with its cause (it was at DEBUG)."""
    counter = [0]
    captures = [FakeCamera(counter, frames=2), None, FakeCamera(counter, frames=None)]

    def factory() -> FakeCamera:
        cap = captures.pop(0)
        if cap is None:
            raise RuntimeError("driver hiccup")
        return cap

    with (
        caplog.at_level(logging.WARNING, logger="rtseg.source.live"),
        open_source("camera://0", capture_factory=factory, reconnect=3, backoff=0.01) as src,
    ):
        frames = [next(src) for _ in range(4)]
        assert src.stats.reconnects == 1
    assert [f.index for f in frames] == sorted({f.index for f in frames})
    assert "RuntimeError: driver hiccup" in caplog.text


def test_rate_on_a_live_source_thins_without_counting_drops_and_spaces_the_second_frame() -> None:
    """A 100 fps camera at rate=5: the frames between slots were counted as dropped (the summary's
    'dropped at the source'), and the second frame came 10 ms after the first."""
    factory = Factory([FakeCamera([0], frames=None, period=0.01)])
    with open_source("camera://0", capture_factory=factory, rate=5) as src:
        times = []
        for _ in range(4):
            next(src)
            times.append(time.perf_counter())
        stats = src.stats
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.18 for gap in gaps), gaps  # 0.2 s apart, the first pair too
    assert stats.delivered == 4 and stats.dropped <= 3  # not the ~60 frames the rate skipped


def test_frames_a_consumer_past_its_rate_slot_skips_are_dropped_not_thinned() -> None:
    # a 100 fps camera, rate=50, a consumer taking 0.1 s a frame: each frame's slot has passed when
    # it asks, and the ~9 frames captured meanwhile were all counted as thinned (dropped=0)
    factory = Factory([FakeCamera([0], frames=None, period=0.01)])
    with open_source("camera://0", capture_factory=factory, rate=50) as src:
        frames = []
        for _ in range(6):
            frames.append(next(src))
            time.sleep(0.1)
        stats = src.stats
    skipped = frames[-1].index - frames[0].index - (len(frames) - 1)
    assert skipped >= 30 and stats.dropped >= skipped - 2 * (len(frames) - 1), (skipped, stats)


@pytest.mark.parametrize(
    ("reported", "fps"),
    [(240.0, 240.0), (90000.0, None), (0.0, None), (float("nan"), None), (-5.0, None)],
)
def test_a_camera_frame_rate_is_taken_as_reported_when_plausible(caplog, reported: float, fps) -> None:
    """An RTSP stream without an average rate reports its 90 kHz clock (OpenCV: 1/time_base): a
    recording behind it was written at 90000 fps, each frame repeated thousands of times. 0 (the
    camera does not say) is unknown without a warning; the rest with one."""

    class Camera(FakeCamera):
        def get(self, prop: int) -> float:
            return reported if prop == cv2.CAP_PROP_FPS else 0.0

    with (
        caplog.at_level(logging.WARNING, logger="rtseg.source.live"),
        open_source("camera://0", capture_factory=Factory([Camera([0], frames=None)])) as src,
    ):
        assert src.info.fps == fps
    said = f"reports a frame rate of {reported:g}; taken as unknown"
    assert (said in caplog.text) is (reported not in (0.0, 240.0))


def test_decode_threads_sets_ffmpegs_decoder_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4K H.265 needs more than one thread to decode in real time: it must be possible to ask
    opened: list[list[int]] = []

    def video_capture(url: str, backend: int, params: list[int]) -> FakeCamera:
        opened.append(params)
        return FakeCamera([0], frames=None)

    monkeypatch.setattr(cv2, "VideoCapture", video_capture)
    for threads in (3, 0):
        with open_source("rtsp://127.0.0.1:1/x", timeout=2.0, decode_threads=threads) as src:
            next(src)
    settings = [dict(zip(p[::2], p[1::2], strict=True)) for p in opened]
    assert settings[0][cv2.CAP_PROP_N_THREADS] == 3
    assert cv2.CAP_PROP_N_THREADS not in settings[1]  # 0: FFmpeg's default, one per core
    for bad in (-1, 1.5, True, 65):
        with pytest.raises(ConfigError, match=r"decode_threads must be a whole number from 0"):
            open_source("rtsp://127.0.0.1:1/x", decode_threads=bad)


def test_a_live_stream_is_decoded_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """FFmpeg's frame threading holds a frame per decoder thread (one per core by default): the
    newest frame of a 25 fps stream was 104 ms old with 2 threads, 349 ms with 8, 59 ms with 1."""
    opened: list[tuple[str, int, list[int]]] = []

    def video_capture(url: str, backend: int, params: list[int]) -> FakeCamera:
        opened.append((url, backend, params))
        return FakeCamera([0], frames=None)

    monkeypatch.setattr(cv2, "VideoCapture", video_capture)
    with open_source("rtsp://127.0.0.1:1/x", timeout=2.0) as src:
        next(src)
    [(url, backend, params)] = opened
    assert url == "rtsp://127.0.0.1:1/x" and backend == cv2.CAP_FFMPEG
    settings = dict(zip(params[::2], params[1::2], strict=True))
    assert settings[cv2.CAP_PROP_N_THREADS] == 1
    assert settings[cv2.CAP_PROP_READ_TIMEOUT_MSEC] == settings[cv2.CAP_PROP_OPEN_TIMEOUT_MSEC] == 2000


def test_a_signal_ends_the_wait_for_a_first_open_that_hangs(interrupt_in) -> None:
    """FFmpeg's open of a server that accepts and never answers cannot be interrupted: run on the
    caller's thread, Ctrl-C was held for the whole open timeout. The abandoned open, when it
    returns, releases what it opened."""
    answer = threading.Event()
    cam = FakeCamera([0], frames=None)

    def hanging_open() -> FakeCamera:
        # As a C call does, take the signal's exception only when the open returns.
        deadline, pending = time.monotonic() + 3.0, None
        while not answer.is_set() and time.monotonic() < deadline:
            try:
                answer.wait(deadline - time.monotonic())
            except interrupt_in.error as exc:
                pending = exc
        if pending is not None:
            raise pending
        return cam

    interrupt_in(0.2)
    start = time.perf_counter()
    with pytest.raises(interrupt_in.error):
        open_source("rtsp://127.0.0.1:1/x", capture_factory=hanging_open, timeout=3.0)
    took = time.perf_counter() - start
    answer.set()  # the server answers at last
    assert took < 1.0
    assert cam.released.wait(2.0)


class Probed(FakeCamera):
    """A 25 fps network stream just opened: FFmpeg hands over ``backlog`` frames it buffered while
    probing (pixel value = their number, 1 up), decoded at once, then live frames every
    ``live_period`` s (pixel value 100 up), or none when ``live_period`` is None (a static stream)."""

    def __init__(self, backlog: int, live_period: float | None, frames: int | None = None) -> None:
        super().__init__([0], frames=frames, period=0.0)
        self.backlog = backlog
        self.live_period = live_period
        self.live = 0

    def get(self, prop: int) -> float:
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        if self.left is not None:
            if self.left <= 0:
                return False, None
            self.left -= 1
        if self.backlog > 0:
            self.backlog -= 1
            self.counter[0] += 1
            return True, np.full((8, 8, 3), self.counter[0], np.uint8)
        if self.live_period is None:
            self.released.wait(5.0)
            return False, None
        time.sleep(self.live_period)
        self.live += 1
        return True, np.full((8, 8, 3), 100 + self.live % 100, np.uint8)


class SlowOpen(Factory):
    """An open that takes ``seconds``, as FFmpeg's probe of an RTSP stream does (1.15 s)."""

    def __init__(self, captures: list[FakeCamera], seconds: float) -> None:
        super().__init__(captures)
        self.seconds = seconds

    def __call__(self) -> FakeCamera:
        time.sleep(self.seconds)
        return super().__call__()


def test_the_backlog_an_open_leaves_is_not_handed_over() -> None:
    # The first frame after an RTSP open or reconnect was as old as the open took (1.15 s): FFmpeg
    # decodes what it buffered while probing within milliseconds of the open. A 0.3 s open of a
    # 25 fps stream leaves about 8 frames.
    first, second = Probed(backlog=8, live_period=0.02, frames=18), Probed(backlog=8, live_period=0.02)
    factory = SlowOpen([first, second], 0.3)
    with open_source("rtsp://127.0.0.1:1/x", capture_factory=factory, backoff=0.01) as src:
        start = time.perf_counter()
        frame = next(src)
        took = time.perf_counter() - start
        assert frame.image[0, 0, 0] >= 100 and took < 0.5  # a live frame, not the probe's first
        while not src.stats.reconnects:
            frame = next(src)
        while not frame.discontinuity:
            frame = next(src)
    assert frame.image[0, 0, 0] >= 100  # after the reconnect too


class MJPEGOverHTTP(Probed):
    """FFmpeg says 25 fps for every MJPEG stream; this one sends 160 frames a second."""

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FOURCC:
            return float(int.from_bytes(b"MJPG", "little"))
        return super().get(prop)


@pytest.mark.parametrize(
    ("url", "capture"),
    [
        # every read under a quarter of FFmpeg's assumed 40 ms looked like backlog: the first
        # frame waited the whole 1 s after every open
        ("http://127.0.0.1:1/stream", lambda: MJPEGOverHTTP(backlog=0, live_period=1 / 160)),
        # 120 fps sent, 25 reported: every live read looked like backlog, and nothing was handed
        # over for the whole second after each open (about 120 fresh frames dropped per reconnect)
        ("rtsp://127.0.0.1:1/x", lambda: Probed(backlog=0, live_period=1 / 120)),
    ],
    ids=["mjpeg-over-http", "faster-than-it-says"],
)
def test_a_stream_faster_than_its_reported_rate_is_not_held_for_the_whole_second(url, capture) -> None:
    with open_source(url, capture_factory=Factory([capture()]), timeout=5) as src:
        start = time.perf_counter()
        next(src)
        assert time.perf_counter() - start < 0.3


def test_a_static_stream_still_delivers_its_frame_after_the_open() -> None:
    factory = Factory([Probed(backlog=3, live_period=None)])
    with open_source("rtsp://127.0.0.1:1/x", capture_factory=factory, timeout=10) as src:
        start = time.perf_counter()
        frame = next(src)
        assert time.perf_counter() - start < 0.3  # a frame period after the last one, not never
    assert frame.image[0, 0, 0] == 3  # the newest there was


def test_a_stream_faster_than_its_frame_rate_is_delivered_after_a_bounded_wait() -> None:
    factory = Factory([Probed(backlog=10**9, live_period=None)])  # every read at once, for ever
    with open_source("rtsp://127.0.0.1:1/x", capture_factory=factory) as src:
        start = time.perf_counter()
        next(src)
        assert time.perf_counter() - start < 1.6  # BACKLOG_MAX_S (1 s) and change


class Probed1080(Probed):
    """A 25 fps 1920x1080 RTSP stream just opened: its first two reads (the IDR frame) take 15 ms,
    over a quarter of a frame period, the rest of the backlog 2 ms; FFmpeg gives every frame its
    media time (POS_MSEC), 0 for the first two."""

    def __init__(self, backlog: int, live_period: float) -> None:
        super().__init__(backlog, live_period)
        self.reads = 0

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_POS_MSEC:
            return 40.0 * max(self.reads - 2, 0)
        return super().get(prop)

    def read(self):
        self.reads += 1
        if self.backlog > 0:
            time.sleep(0.015 if self.reads <= 2 else 0.002)
        return super().read()


def test_a_backlog_whose_first_reads_are_slow_is_still_not_handed_over() -> None:
    # The IDR frame of a 1080p stream took 9-19 ms to decode: the read-time rule ended the backlog
    # there and the first frame was 1.15 s old, with ~28 stale frames after it.
    factory = SlowOpen([Probed1080(backlog=12, live_period=0.04)], 0.5)
    with open_source("rtsp://127.0.0.1:1/x", capture_factory=factory, timeout=5) as src:
        first = next(src)
    # live, or the backlog's last frame (its live successor comes a frame period later): not the
    # second, whose read was slow
    assert first.image[0, 0, 0] >= 100 or first.image[0, 0, 0] == 12, first.image[0, 0, 0]


class Handshake(Probed1080):
    """A stream behind a slow handshake (a slow link, authentication): the open takes long, but
    the probe buffered only ``backlog`` frames; live frames come with their media time."""


def test_a_slow_handshake_is_not_taken_for_a_backlog() -> None:
    # the open's length counted as buffered media: behind a 1.5 s open without any backlog, every
    # live frame was held as backlog and replaced by the next for a whole second
    factory = SlowOpen([Handshake(backlog=0, live_period=0.035)], 1.5)  # a little faster than said
    with open_source("rtsp://127.0.0.1:1/x", capture_factory=factory, timeout=5) as src:
        start = time.perf_counter()
        next(src)
        assert time.perf_counter() - start < 0.5


class MJPEGOverRTSP(MJPEGOverHTTP):
    """An RTSP MJPEG stream: it reports its true rate (25 fps here) and leaves a probe's backlog."""


def test_an_mjpeg_stream_over_rtsp_is_held_as_a_backlog() -> None:
    # only HTTP's 25 fps is a guess: the first frame of a 25 fps RTSP MJPEG stream was 0.82 s old
    factory = SlowOpen([MJPEGOverRTSP(backlog=8, live_period=0.02)], 0.3)
    with open_source("rtsp://127.0.0.1:1/x", capture_factory=factory, timeout=5) as src:
        frame = next(src)
    assert frame.image[0, 0, 0] >= 100  # a live frame, not the probe's first


class HLSBursts(FakeCamera):
    """A live 25 fps HLS stream through FFmpeg: each 1 s segment's 25 frames come at once when it
    arrives, with their media time (POS_MSEC)."""

    def __init__(self) -> None:
        super().__init__([0], frames=None, period=0.0)
        self.reads = 0
        self.start = time.perf_counter()

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_POS_MSEC:
            return 40.0 * (self.reads - 1)
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        if self.reads and self.reads % 25 == 0:  # the next segment, a second after the last
            self.released.wait(max(self.start + self.reads / 25 - time.perf_counter(), 0.0))
        self.reads += 1
        return True, np.full((8, 8, 3), self.reads % 256, np.uint8)


def test_a_live_hls_stream_is_delivered_at_its_frame_rate_not_a_frame_a_segment() -> None:
    # the newest-frame slot kept each segment's last frame: 1.09 frames a second of 25
    factory = Factory([HLSBursts()])
    with open_source("http://127.0.0.1:1/live/index.m3u8", capture_factory=factory, timeout=5) as src:
        start = time.perf_counter()
        frames = []
        while time.perf_counter() - start < 2.5:
            frames.append(next(src))
    assert len(frames) >= 50, len(frames)  # 2.5 s of it: 62, less the first segment's wait
