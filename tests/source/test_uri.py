from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np
import pytest

from rtseg.errors import ConfigError, SourceError
from rtseg.source import SCHEMES, is_live_uri, open_source, redacted
from rtseg.source.diagnose import http_problem
from rtseg.source.images import list_images
from rtseg.source.uri import is_recorded_video


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unsupported_scheme_lists_the_supported_ones() -> None:
    with pytest.raises(SourceError) as err:
        open_source("ftp://example.com/clip.mp4")
    text = str(err.value)
    assert "'ftp'" in text
    for scheme in ("file://", "images://", "camera://", "v4l2://", "rtsp://", "http(s)://", "synthetic://"):
        assert scheme in text
    assert set(SCHEMES) >= {"file", "rtsp", "synthetic"}


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_stream_with_nothing_behind_it_fails_fast(scheme: str) -> None:
    uri = f"{scheme}://127.0.0.1:{_closed_port()}/stream"
    start = time.perf_counter()
    with pytest.raises(SourceError) as err:
        open_source(uri, timeout=2.0)
    assert time.perf_counter() - start < 2.0 + 1.0
    # http is asked why, within what is left of the timeout: the connection was refused
    said = "nothing answered" if scheme == "rtsp" else "was refused"
    assert uri in str(err.value) and said in str(err.value)


def test_stream_server_that_never_answers_times_out_as_configured() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        start = time.perf_counter()
        with pytest.raises(SourceError, match="within 1 s"):
            open_source(f"rtsp://127.0.0.1:{server.getsockname()[1]}/live", timeout=1.0)
        elapsed = time.perf_counter() - start
        assert 0.8 < elapsed < 3.0
    finally:
        server.close()
        for c in held:
            c.close()


def test_camera_and_v4l2_uris_are_checked() -> None:
    with pytest.raises(SourceError, match="camera number"):
        open_source("camera://front")
    with pytest.raises(SourceError, match="no such video device"):
        open_source("v4l2:///dev/video-does-not-exist")
    with pytest.raises(ConfigError, match="unknown option"):
        open_source("camera://0?exposure=3")


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="resize"):
        open_source("synthetic://drive", resize=(0, 10))
    with pytest.raises(ConfigError, match="rate"):
        open_source("synthetic://drive", rate=0)
    with pytest.raises(ConfigError, match="timeout"):
        open_source("synthetic://drive", timeout=0)


def test_file_uri_rejects_query_options(tmp_path) -> None:
    with pytest.raises(SourceError, match="take no"):
        open_source(f"file://{tmp_path}/a.mp4?loop=1")


def test_a_question_mark_in_a_file_uri_says_how_to_glob_or_escape_it(tmp_path: Path) -> None:
    # 'file and image sources take no ?options (got ['.png'])' left the user guessing.
    for name in ("f_1.png", "f_2.png", "q?.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(SourceError) as err:
        open_source(f"file://{tmp_path}/f_?.png")
    glob = f"images://{tmp_path}/f_?.png"
    assert f"for a glob use images:// ({glob})" in str(err.value)
    with open_source(glob) as src:
        assert sum(1 for _ in src) == 2
    with pytest.raises(SourceError) as err:
        open_source(f"file://{tmp_path}/q?.png")
    escaped = f"file://{tmp_path}/q%3F.png"
    assert f"for a '?' in the file name write %3F ({escaped})" in str(err.value)
    with open_source(escaped) as src:
        assert sum(1 for _ in src) == 1


@pytest.mark.parametrize(
    "uri, shown",
    [
        ("rtsp://admin:pw@cam.local:554/live", "rtsp://admin:***@cam.local:554/live"),
        ("https://u:p@h/c.mp4?sig=abc&x=", "https://u:***@h/c.mp4?sig=***&x=***"),
        ("rtsp://user@cam/live", "rtsp://user@cam/live"),  # no password: nothing to hide
        ("http://h/x", "http://h/x"),
        ("synthetic://drive?size=64x48", "synthetic://drive?size=64x48"),  # options, not secrets
        ("clip.mp4", "clip.mp4"),
    ],
)
def test_network_credentials_are_redacted(uri: str, shown: str) -> None:
    assert redacted(uri) == shown


@pytest.mark.parametrize(
    "uri, message",
    [
        ("http://127.0.0.1:abc/x", r"127\.0\.0\.1:abc/x: bad port 'abc'; expected a number from 1 to 65535"),
        ("http://127.0.0.1:abc/x.mp4", r"bad port 'abc'"),  # a recorded video's URL is checked too
        ("rtsp://cam:99999/x", r"rtsp://cam:99999/x: bad port '99999'"),
        ("rtsp://[::1]:0/x", r"bad port '0'"),
        (
            "rtsp://[::1",
            r"rtsp://\[::1: malformed host \(Invalid IPv6 URL\); expected rtsp://HOST\[:PORT\]/PATH",
        ),
        ("http://[::1/x.mp4", r"malformed host"),
        ("rtsp://", r"rtsp://: no host in the URL"),
        ("https:///path/only", r"no host in the URL"),
        ("rtsp://admin:s3cret@:554/x", r"rtsp://admin:\*\*\*@:554/x: no host"),
    ],
)
def test_malformed_network_urls_are_source_errors_naming_the_part(uri: str, message: str) -> None:
    """They were raw ValueErrors from urlsplit; a URL without a host was only found out after the
    open's timeout ("nothing answered at None:the default port")."""
    start = time.perf_counter()
    with pytest.raises(SourceError, match=message) as err:
        open_source(uri, timeout=5.0)
    assert time.perf_counter() - start < 1.0  # refused up front, nothing opened
    assert "s3cret" not in str(err.value)


def test_malformed_urls_do_not_break_the_helpers() -> None:
    assert not is_recorded_video("http://[::1/x.mp4")
    assert http_problem("http://127.0.0.1:abc/x", 1.0) is None
    assert redacted("rtsp://u:pw@[::1/x?tok=1") == "rtsp://u:***@[::1/x?tok=***"


def test_an_exception_opening_a_capture_is_shown_not_hidden_behind_the_hint() -> None:
    """A factory failure (a bad parameter, a driver bug) was logged at debug level and reported as
    "is camera 0 connected", or for a stream, falsely, as "nothing answered within ... s"."""

    def broken() -> None:
        raise RuntimeError("bad parameter for the driver")

    with pytest.raises(SourceError, match=r"cannot open camera://0: RuntimeError: bad parameter") as err:
        open_source("camera://0", capture_factory=broken)
    assert "connected" not in str(err.value)
    with pytest.raises(SourceError, match=r"RuntimeError: bad parameter") as err:
        open_source("rtsp://127.0.0.1:1/x", capture_factory=broken)
    assert "nothing answered" not in str(err.value)


@pytest.fixture()
def workdir_with_an_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder holds an image: an empty path read it as a one-frame source."""
    cv2.imwrite(str(tmp_path / "stray.png"), np.zeros((8, 8, 3), np.uint8))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("uri", ["", "file://", "images://", "file://localhost"])
def test_an_empty_path_is_refused_not_the_working_folder(uri: str, workdir_with_an_image: Path) -> None:
    with pytest.raises(SourceError, match=r"empty path in source"):
        open_source(uri)
    with pytest.raises(SourceError, match=r"empty image path"):
        list_images("")


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home folder (HOME, which '~' expands to) with imgs/ of two images and clip.png."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path / "imgs" / f"f{i}.png"), np.full((8, 8, 3), 50 * i, np.uint8))
    cv2.imwrite(str(tmp_path / "clip.png"), np.zeros((8, 8, 3), np.uint8))
    monkeypatch.chdir("/")
    return tmp_path


@pytest.mark.parametrize(
    "uri, frames",
    [
        ("~/imgs", 2),  # a plain path was expanded already
        ("~/imgs/f*.png", 2),
        ("images://~/imgs", 2),
        ("images://~/imgs/f1.*", 1),
        ("file://~/imgs", 2),
        ("file://~/imgs/*.png", 2),
        ("file://~/clip.png", 1),
    ],
)
def test_home_is_expanded_in_every_local_path(uri: str, frames: int, home: Path) -> None:
    with open_source(uri) as src:
        assert len(list(src)) == frames
        assert all(str(p).startswith(str(home)) for p in src.files)


@pytest.fixture()
def spaced_video(tmp_path: Path, video_file) -> Path:
    path = tmp_path / "a dir" / "my clip%.mp4"
    path.parent.mkdir()
    shutil.copyfile(video_file[0], path)
    return path


def test_file_uri_escapes_are_decoded(spaced_video: Path) -> None:
    with open_source("file://" + quote(str(spaced_video))) as src:
        assert src.files == (spaced_video,) and src.info.kind == "video"


def test_file_uri_host_may_be_empty_or_localhost(spaced_video: Path) -> None:
    for uri in ("file://" + quote(str(spaced_video)), "file://localhost" + quote(str(spaced_video))):
        with open_source(uri) as src:
            assert src.files == (spaced_video,)
    with open_source(f"file://LOCALHOST{spaced_video}") as src:  # unescaped, as people type it
        assert src.files == (spaced_video,)


def test_file_uri_on_another_host_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=r"file:// names local files only: the host 'nas' is not localhost"):
        open_source("file://nas/share/clip.mp4")


def test_file_uri_relative_to_the_working_folder_still_works(spaced_video: Path, monkeypatch) -> None:
    monkeypatch.chdir(spaced_video.parent.parent)  # file://clip.mp4 is documented (README)
    with open_source("file://a%20dir/my%20clip%25.mp4") as src:
        assert src.files == (Path("a dir/my clip%.mp4"),)


@pytest.mark.parametrize(
    ("uri", "live"),
    [
        ("camera://0", True),
        ("0", True),
        ("/dev/video2", True),
        ("v4l2:///dev/video0", True),
        ("rtsp://cam/live", True),
        ("http://cam/mjpg", True),
        ("https://example.com/clip.mp4?token=1", False),  # a recorded video: every frame in order
        ("clip.mp4", False),
        ("synthetic://drive", False),
        ("images://frames", False),
    ],
)
def test_a_live_uri_is_known_from_its_text(uri: str, live: bool) -> None:
    assert is_live_uri(uri) is live
