from __future__ import annotations

import socket
import threading
import time

import pytest

from rtseg.errors import ConfigError, SourceError
from rtseg.source import SCHEMES, open_source, redacted


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
    assert uri in str(err.value) and "nothing answered" in str(err.value)


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
