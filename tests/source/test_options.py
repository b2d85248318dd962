"""Source options, in a URI's query or as arguments: a bad one is a ConfigError naming it, never a
value quietly fixed or a failure at the first frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from rtseg.errors import ConfigError
from rtseg.source import diagnose, live, open_source
from rtseg.source.base import MAX_FRAME_SIDE, MAX_TIMEOUT_S, MIN_TIMEOUT_S, timeout_ms
from rtseg.source.synthetic import DriveParams


@pytest.mark.parametrize(
    "uri, message",
    [
        ("synthetic://drive?size=12x", r"option size must be WIDTHxHEIGHT.*got '12x'"),
        ("synthetic://drive?size=64x48x3", r"option size must be WIDTHxHEIGHT.*got '64x48x3'"),
        ("synthetic://drive?size=-64x48", r"option size must be WIDTHxHEIGHT.*got '-64x48'"),
        ("synthetic://drive?size=16x16", r"option size must be at least 32x32, got '16x16'"),
        ("synthetic://drive?fps=-1", r"option fps must be a positive finite number.*got '-1'"),
        ("synthetic://drive?fps=0", r"option fps must be a positive finite number.*got '0'"),
        ("synthetic://drive?fps=nan", r"option fps must be a positive finite number.*got 'nan'"),
        ("synthetic://drive?fps=", r"option fps must be a positive finite number.*got ''"),
        ("synthetic://drive?seed=-1", r"option seed must be a whole number >= 0, got '-1'"),
        ("synthetic://drive?seed=1.5", r"option seed must be a whole number >= 0, got '1.5'"),
        ("synthetic://drive?frames=0", r"option frames must be a whole number of frames >= 1, got '0'"),
        ("synthetic://drive?loop=maybe", r"unknown option\(s\) \['loop'\]; allowed: size, fps, seed, frames"),
        ("synthetic://drive?fps=10&fps=20", r"option\(s\) \['fps'\] given more than once"),
        ("camera://0?width=-640", r"option width must be a whole number of pixels >= 1, got '-640'"),
        ("camera://0?height=480.5", r"option height must be a whole number of pixels >= 1, got '480.5'"),
        ("camera://0?fps=0", r"option fps must be a positive number of frames per second, got '0'"),
        ("camera://0?exposure=3", r"unknown option\(s\) \['exposure'\]; allowed: width, height, fps"),
    ],
)
def test_bad_query_options_are_config_errors_naming_the_option(uri: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_source(uri)


def test_good_query_options_are_taken_as_given() -> None:
    with open_source("synthetic://drive?size=64X48&fps=12.5&seed=0&frames=2") as src:
        assert src.info.size == (64, 48) and src.info.fps == 12.5 and src.info.frame_count == 2
        assert len(list(src)) == 2


@pytest.mark.parametrize(
    "options, message",
    [
        ({"loop": "maybe"}, r"loop must be True or False, got 'maybe'"),
        ({"realtime": 1}, r"realtime must be True or False, got 1"),
        (
            {"resize": (32.0, 24.0)},
            r"resize must be \(width, height\) with positive integers, got \(32.0, 24.0\)",
        ),
        ({"resize": (True, 24)}, r"resize must be \(width, height\) with positive integers"),
        ({"resize": 32}, r"resize must be \(width, height\) with positive integers, got 32"),
        ({"reconnect": 1.5}, r"reconnect must be a whole number of attempts >= 0, got 1.5"),
    ],
)
def test_bad_arguments_are_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_source("synthetic://drive?size=64x48", **options)


def test_numpy_integers_and_bools_are_accepted() -> None:
    with open_source(
        "synthetic://drive?size=64x48&frames=1", resize=(np.int64(32), np.int32(24)), loop=np.bool_(False)
    ) as src:
        assert next(src).image.shape == (24, 32, 3)


@pytest.mark.parametrize(
    "timeout",
    [0.0009, 1e-9, MIN_TIMEOUT_S / 2, float("inf"), float("nan"), 5_000_000.0, MAX_TIMEOUT_S + 0.01],
)
def test_timeouts_ffmpeg_cannot_take_are_refused(timeout: float) -> None:
    """Under 1 ms truncated to 0 ms, which FFmpeg reads as "no timeout" (a silent server hung the
    run, deaf to SIGTERM); over int32 milliseconds OpenCV failed with a traceback, or a live open
    failed at once as "nothing answered"."""
    with pytest.raises(ConfigError, match=r"timeout must be a number of seconds from 0\.001 .* got ") as err:
        open_source("synthetic://drive?size=64x48", timeout=timeout)
    assert repr(timeout) in str(err.value)


def test_timeout_bounds_are_whole_milliseconds_ffmpeg_takes() -> None:
    assert timeout_ms(MIN_TIMEOUT_S) == 1  # the smallest accepted is 1 ms, never 0
    assert timeout_ms(0.0019) == 1
    assert timeout_ms(MAX_TIMEOUT_S) in (2**31 - 2, 2**31 - 1)
    with open_source("camera://0", timeout=MIN_TIMEOUT_S, capture_factory=_OneFrame) as src:
        assert src.options.timeout == MIN_TIMEOUT_S


class _OneFrame:
    """A capture that opens and gives one frame, then ends: a camera for options that only
    cameras and streams take."""

    def __init__(self) -> None:
        self.left = 1

    def isOpened(self) -> bool:
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.left -= 1
        return (True, np.zeros((48, 64, 3), np.uint8)) if self.left >= 0 else (False, None)

    def get(self, prop: int) -> float:
        return 0.0

    def release(self) -> None:
        pass


@pytest.mark.parametrize(
    "options, backoff, backoff_max",
    [
        ({}, 0.5, 8.0),
        ({"backoff_max": 1}, 0.5, 1),  # open_source had no backoff_max (a TypeError, an unexpected keyword)
        ({"backoff": 0.1, "backoff_max": 0.3}, 0.1, 0.3),
        ({"backoff": 2.0, "backoff_max": 2.0}, 2.0, 2.0),
        ({"backoff": 10.0}, 10.0, 10.0),  # the default backoff_max follows a backoff given beyond it
        ({"backoff_max": 0.2}, 0.2, 0.2),  # and the default backoff a backoff_max given below it
        ({"backoff_max": 0}, 0, 0),
    ],
)
def test_backoff_and_backoff_max_are_taken_as_given(
    options: dict, backoff: float, backoff_max: float
) -> None:
    with open_source("camera://0", capture_factory=_OneFrame, **options) as src:
        assert (src.options.backoff, src.options.backoff_max) == (backoff, backoff_max)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"backoff": 2.0, "backoff_max": 1.0}, r"backoff=2\.0 and backoff_max=1\.0$"),
        ({"backoff": 10, "backoff_max": 8.0}, r"backoff=10 and backoff_max=8\.0$"),
        ({"backoff_max": -1.0}, r"^backoff_max must be >= 0 seconds, got -1\.0$"),
        ({"backoff_max": float("nan")}, r"backoff_max must be a finite number of seconds, got nan"),
        ({"backoff_max": "8"}, r"backoff_max must be a finite number of seconds, got '8'"),
        ({"backoff": -0.5, "backoff_max": 1.0}, r"backoff must be >= 0 seconds, got -0\.5"),
    ],
)
def test_a_backoff_above_backoff_max_is_refused_naming_both(options: dict, message: str) -> None:
    """A backoff_max given is never raised to fit the backoff: it is the user's, as the backoff."""
    with pytest.raises(ConfigError, match=message):
        open_source("camera://0", capture_factory=_never_opened, **options)


def test_backoff_max_is_refused_where_nothing_reconnects() -> None:
    with pytest.raises(ConfigError, match=r"^backoff_max=2\.0 applies to cameras and live streams"):
        open_source("synthetic://drive?size=64x48", backoff_max=2.0)


def _never_opened() -> None:
    raise AssertionError("the source was opened although its options were refused")


@pytest.mark.parametrize(
    "uri, options, message",
    [
        (
            "rtsp://admin:s3cret@127.0.0.1:1/x",
            {"loop": True},
            r"^loop=True applies to files, image folders and synthetic scenes with frames=N \(restarted at "
            r"their end\); rtsp://admin:\*\*\*@127\.0\.0\.1:1/x is a live network stream$",
        ),
        ("http://127.0.0.1:1/stream.mjpg", {"realtime": True}, r"^realtime=True applies to files, .*stream"),
        (
            "camera://0",
            {"loop": True, "realtime": True},
            r"^loop=True .*; realtime=True .*; camera://0 is a camera$",
        ),
        ("v4l2:///dev/video0", {"decode_threads": 2}, r"^decode_threads=2 applies to live network streams"),
        ("camera://0", {"decode_threads": 0}, r"decode_threads=0 applies .*camera://0 is a camera"),
        (
            "synthetic://drive?size=64x48&frames=3",
            {"timeout": 5.0},
            r"^timeout=5\.0 applies to cameras and network URLs .*"
            r"synthetic://drive\?size=64x48&frames=3 is a synthetic scene$",
        ),
        (
            "synthetic://drive?size=64x48",
            {"reconnect": 2},
            r"^reconnect=2 applies to cameras and live streams",
        ),
        (
            "synthetic://drive?size=64x48",
            {"backoff": 1.0},
            r"^backoff=1\.0 applies to cameras and live streams",
        ),
        # an endless scene has no end to restart at
        ("synthetic://drive?size=64x48", {"loop": True}, r"is an endless synthetic scene \(no frames=N\)$"),
        # a recorded video at a URL is read like a file: never reopened, its decoder FFmpeg's default
        ("http://127.0.0.1:1/clip.mp4", {"reconnect": 3}, r"clip\.mp4 is a recorded video at a URL"),
        ("http://127.0.0.1:1/clip.mp4", {"decode_threads": 2}, r"^decode_threads=2 applies"),
    ],
)
def test_options_that_do_not_apply_to_the_source_are_refused_before_it_opens(
    uri: str, options: dict, message: str
) -> None:
    """They were accepted and did nothing: loop and realtime on a camera or stream (a LiveSource
    reads neither), timeout, reconnect and decode_threads on a local or synthetic source."""
    with pytest.raises(ConfigError, match=message) as err:
        open_source(uri, capture_factory=_never_opened, **options)  # type: ignore[arg-type]
    assert "s3cret" not in str(err.value)


def test_options_that_do_not_apply_to_a_local_file_are_refused(tmp_path) -> None:
    image = tmp_path / "f.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(
        ConfigError, match=rf"^timeout=3 applies .*; {image} is a local file or image folder$"
    ):
        open_source(image, timeout=3)


@pytest.mark.parametrize(
    "uri, options",
    [
        ("synthetic://drive?size=64x48&frames=2", {"loop": True, "realtime": True, "rate": 30.0}),
        ("synthetic://drive?size=64x48&frames=2", {"loop": False, "realtime": False}),  # asks for nothing
        (
            "synthetic://drive?size=64x48&frames=2",
            {"timeout": None, "reconnect": None, "decode_threads": None},
        ),
        ("camera://0", {"timeout": 2.0, "reconnect": 0, "backoff": 0.01, "rate": 30.0, "resize": (32, 24)}),
        ("rtsp://127.0.0.1:1/x", {"timeout": 2.0, "reconnect": 0, "decode_threads": 2, "loop": False}),
    ],
)
def test_options_that_apply_are_taken(uri: str, options: dict) -> None:
    with open_source(uri, capture_factory=_OneFrame, **options) as src:
        assert next(src).image is not None


def test_zero_milliseconds_never_reach_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[list[int]] = []
    monkeypatch.setattr(live.cv2, "VideoCapture", lambda url, api, params: opened.append(params))
    with pytest.raises(ConfigError, match=r"got 0\.0009"):
        live.open_network("rtsp://127.0.0.1:1/x", 0.0009)
    with pytest.raises(ConfigError, match=r"got inf"):
        diagnose.http_problem("http://127.0.0.1:1/x", float("inf"))
    live.open_network("rtsp://127.0.0.1:1/x", 0.001)
    assert opened == [[cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 1, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 1]]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"rate": "5"}, r"rate must be None or a positive finite number of frames per second, got '5'"),
        ({"rate": True}, r"rate must be None or a positive finite number .*got True"),
        ({"timeout": "5"}, r"timeout must be a number of seconds from 0\.001 .*got '5'"),
        ({"backoff": "1"}, r"backoff must be a finite number of seconds, got '1'"),
        ({"backoff": float("nan")}, r"backoff must be a finite number of seconds, got nan"),
    ],
)
def test_arguments_of_the_wrong_type_are_config_errors(options: dict, message: str) -> None:
    """They were raw TypeErrors ("'<' not supported between ...") from deep in the checks."""
    with pytest.raises(ConfigError, match=message):
        open_source("synthetic://drive?size=64x48", **options)


@pytest.mark.parametrize("uri", [b"clip.mp4", None, 123])
def test_a_source_that_is_not_text_is_a_config_error(uri: object) -> None:
    with pytest.raises(ConfigError, match=r"source must be a path or URI given as str") as err:
        open_source(uri)  # type: ignore[arg-type]
    assert repr(uri) in str(err.value) and type(uri).__name__ in str(err.value)


def test_frame_sizes_are_bounded() -> None:
    """100000x100000 failed with a NumPy MemoryError or cv2's "Insufficient memory" traceback."""
    big = MAX_FRAME_SIDE + 1
    limit = "must be at most 16384 pixels per side"
    with pytest.raises(ConfigError, match=rf"resize {limit}, got \({big}, 24\)"):
        open_source("synthetic://drive?size=64x48", resize=(big, 24))
    with pytest.raises(ConfigError, match=rf"option size {limit}, got '32x{big}'"):
        open_source(f"synthetic://drive?size=32x{big}")
    with pytest.raises(ConfigError, match=rf"synthetic size {limit}"):
        DriveParams(size=(big, 32))
    # the bound itself is a size that works (a thin strip keeps this fast)
    strip = f"synthetic://drive?size={MAX_FRAME_SIDE}x32&frames=1"
    with open_source(strip, resize=(MAX_FRAME_SIDE, 40)) as src:
        assert next(src).image.shape == (40, MAX_FRAME_SIDE, 3)
