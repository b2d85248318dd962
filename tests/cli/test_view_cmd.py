"""`rtseg view`: headless recording and stats from a live publisher, and clear failures."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg.cli import main
from rtseg.data.labels import CAMVID
from rtseg.overlay.annotate import annotate
from rtseg.result import SegResult
from rtseg.source.frame import Frame
from rtseg.stream import Publisher, PublishOptions


def _endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def live_stream() -> Iterator[str]:
    """A publisher sending overlay + labels at about 50 messages/s until the test ends."""
    endpoint = _endpoint()
    stop = threading.Event()
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (128, 96))
    labels = cv2.resize(
        rng.integers(0, 11, (6, 8), dtype=np.uint8), (64, 48), interpolation=cv2.INTER_NEAREST
    )
    publisher = Publisher(endpoint, PublishOptions(parts=("overlay", "labels"), classes_every=5))

    def run() -> None:
        i = 0
        while not stop.is_set():
            frame = Frame(image, i, time.time(), time.perf_counter(), "test")
            result = SegResult(labels, i, i % 2 == 0, i % 2, CAMVID, {"low": 1.0})
            publisher.publish(frame, result, annotate(image, result))
            i += 1
            time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"zmq://{endpoint}"
    finally:
        stop.set()
        thread.join(5)
        publisher.close()


def test_headless_records_a_video(
    live_stream: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "view.avi"
    assert (
        main(["view", live_stream, "--headless", "--frames", "12", "--out", str(out), "--timeout", "5"]) == 0
    )
    text = capsys.readouterr().out
    assert "12 messages" in text and "12 shown" in text and str(out) in text
    assert "end-to-end latency (capture -> receipt): p50" in text
    cap = cv2.VideoCapture(str(out))
    frames = 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames += 1
        assert image.shape == (96, 128, 3)
    cap.release()
    assert frames == 12


def test_headless_writes_colourised_labels_as_pngs(live_stream: str, tmp_path: Path) -> None:
    out = tmp_path / "labels"
    assert (
        main(["view", live_stream, "--headless", "--frames", "12", "--part", "labels", "--out", str(out)])
        == 0
    )
    written = sorted(out.glob("*.png"))
    # frames before the first class set (sent every 5 messages) cannot be coloured and are skipped
    assert 7 <= len(written) <= 12
    image = cv2.imread(str(written[-1]))
    assert image.shape == (96, 128, 3)
    colours = {tuple(int(v) for v in c[::-1]) for c in image.reshape(-1, 3)}
    assert colours <= set(CAMVID.palette)


def test_headless_stats(live_stream: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["view", live_stream, "--headless", "--frames", "5", "--all"]) == 0
    text = capsys.readouterr().out
    assert "5 messages" in text and "keyframes" in text and "sequence gaps" in text


def test_silence_is_a_timeout_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["view", f"zmq://{_endpoint()}", "--headless", "--timeout", "0.3"]) == 2
    assert "no message from tcp://127.0.0.1" in capsys.readouterr().err


def test_window_without_a_display_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["view", f"zmq://{_endpoint()}"]) == 2
    assert "--headless" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "message"),
    [("%d%d.png", "is not a valid pattern"), ("blocker/x.mp4", "cannot create the folder")],
)
def test_an_unusable_out_is_refused_before_waiting(
    name: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "blocker").write_text("")
    t0 = time.monotonic()
    argv = ["view", f"zmq://{_endpoint()}", "--headless", "--timeout", "5", "--out", str(tmp_path / name)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 2 and f"--out {tmp_path / name}: " in err and message in err


def test_out_needs_headless(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["view", f"zmq://{_endpoint()}", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "--headless" in capsys.readouterr().err


@pytest.mark.skipif(not re.search(r"GUI:\s+NONE", cv2.getBuildInformation()), reason="this OpenCV has a GUI")
def test_headless_opencv_build_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DISPLAY", ":99")
    assert main(["view", f"zmq://{_endpoint()}"]) == 2
    err = capsys.readouterr().err
    assert "opencv-python-headless" in err and "pip install opencv-python" in err
