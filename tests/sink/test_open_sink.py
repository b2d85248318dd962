from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from rtseg.errors import SinkError
from rtseg.sink import open_sink
from rtseg.sink.file import FileSink
from rtseg.sink.null import NullSink


def test_paths_and_file_uris(tmp_path: Path) -> None:
    a = open_sink(tmp_path / "a.mp4", fps=12)
    b = open_sink(f"file://{tmp_path}/b/%2505d.jpg", policy="drop")  # '%' is %25 in a URI
    try:
        assert isinstance(a, FileSink) and a.fps == 12 and a.policy == "block"
        assert isinstance(b, FileSink) and b.pattern and b.policy == "drop"
    finally:
        a.close()
        b.close()


def test_file_uris_are_read_as_sources_read_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 8089, as for sources: file://localhost/x wrote ./localhost/x, a%20b.mp4 kept its escape,
    f%2506d.png was no f%06d.png pattern, and file://nas/x.mp4 wrote ./nas/x.mp4."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    for uri, path, pattern in (
        (f"file://localhost{out}/lh.mp4", out / "lh.mp4", False),
        (f"file://LOCALHOST{out}/a%20b.mp4", out / "a b.mp4", False),
        (f"file://{out}/f%2506d.png", out / "f%06d.png", True),
        (f"file://{out}/100%25.mp4", out / "100%.mp4", False),
        ("file://rel%20dir.mp4", Path("rel dir.mp4"), False),  # relative to the working folder
    ):
        with open_sink(uri) as sink:
            assert isinstance(sink, FileSink) and (sink.path, sink.pattern) == (path, pattern), uri
    assert not (tmp_path / "localhost").exists()
    with pytest.raises(SinkError, match=r"file:// names local files only: the host 'nas' is not localhost"):
        open_sink("file://nas/share/o.mp4")
    assert not (tmp_path / "nas").exists()
    # A '%' is an escape in a URI: %06d decodes to a control character, refused rather than written.
    with pytest.raises(
        SinkError, match=r"control character '\\x06': in a file:// URI a '%' starts an escape"
    ):
        open_sink(f"file://{out}/%06d.png")


def test_a_plain_path_is_taken_as_written(tmp_path: Path) -> None:
    with open_sink(str(tmp_path / "a%20b.mp4")) as video:  # no URI: nothing is decoded
        assert video.path == tmp_path / "a%20b.mp4" and not video.pattern
    with open_sink(str(tmp_path / "%06d.png")) as images:
        assert images.path == tmp_path / "%06d.png" and images.pattern


def test_null_and_options() -> None:
    sink = open_sink("null://?overlay=1", policy="drop", queue_size=2)
    assert isinstance(sink, NullSink) and sink.draw and sink.policy == "drop"
    sink.close()
    with pytest.raises(SinkError, match="unknown option"):
        open_sink("null://?colour=1")
    with pytest.raises(SinkError, match="overlay must be 1 or 0 \\(true or false\\), got 'maybe'"):
        open_sink("null://?overlay=maybe")
    # the last one was kept silently, as zmq:// did; sources refuse it too
    with pytest.raises(SinkError, match=r"option\(s\) \['overlay'\] given more than once; give each once"):
        open_sink("null://?overlay=1&overlay=0")
    for value, draw in (("0", False), ("false", False), ("TRUE", True)):
        with open_sink(f"null://?overlay={value}") as quiet:
            assert quiet.draw is draw, value


def test_unsupported_scheme_lists_outputs() -> None:
    with pytest.raises(SinkError) as err:
        open_sink("s3://bucket/out.mp4")
    assert "display://0" in str(err.value) and "zmq://" in str(err.value)


def test_zmq_is_dispatched_lazily_to_the_publisher(monkeypatch) -> None:
    calls = []
    fake = types.ModuleType("rtseg.stream.publisher")
    fake.open_publisher_sink = lambda uri, **kw: calls.append((uri, kw)) or "publisher"
    monkeypatch.setitem(sys.modules, "rtseg.stream.publisher", fake)
    assert open_sink("zmq://tcp://127.0.0.1:5555", policy="drop") == "publisher"
    assert calls == [("zmq://tcp://127.0.0.1:5555", {"policy": "drop"})]


def test_null_takes_no_path() -> None:
    """'null://foo' was taken, as if it wrote somewhere."""
    with pytest.raises(SinkError, match="null:// discards the results and takes no path, got 'foo'"):
        open_sink("null://foo")
    with open_sink("NULL://?overlay=1") as sink:
        assert isinstance(sink, NullSink) and sink.draw


@pytest.mark.parametrize("fps", [0, -5, float("inf"), float("nan")])
def test_fps_is_none_or_positive_and_finite(tmp_path: Path, fps: float) -> None:
    """fps=0 became 30 silently (None, not 0, means "not known"); inf failed every frame later."""
    with pytest.raises(SinkError, match="fps must be None or a positive finite number"):
        open_sink(tmp_path / "a.avi", fps=fps)
    with open_sink(tmp_path / "b.avi") as unknown:
        assert unknown.fps == 30.0
