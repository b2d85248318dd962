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
    b = open_sink(f"file://{tmp_path}/b/%05d.jpg", policy="drop")
    try:
        assert isinstance(a, FileSink) and a.fps == 12 and a.policy == "block"
        assert isinstance(b, FileSink) and b.pattern and b.policy == "drop"
    finally:
        a.close()
        b.close()


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
