"""`rtseg view`: headless recording and stats from a live publisher, and clear failures."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

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
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (128, 96))
    labels = cv2.resize(
        rng.integers(0, 11, (6, 8), dtype=np.uint8), (64, 48), interpolation=cv2.INTER_NEAREST
    )
    publisher = Publisher(endpoint, PublishOptions(parts=("overlay", "labels"), classes_every=5))

    def send(i: int) -> None:
        frame = Frame(image, i, time.time(), time.perf_counter(), "test")
        result = SegResult(labels, i, i % 2 == 0, i % 2, CAMVID, {"low": 1.0})
        publisher.publish(frame, result, annotate(image, result))

    try:
        with _publishing(send):
            yield f"zmq://{endpoint}"
    finally:
        publisher.close()


@contextmanager
def _publishing(send: Callable[[int], None]) -> Iterator[None]:
    """Calls send(0), send(1), ... about every 20 ms on a thread until the block ends."""
    stop = threading.Event()

    def run() -> None:
        i = 0
        while not stop.is_set():
            send(i)
            i += 1
            time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


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


def test_topic_receives_that_stream_id_exactly(tmp_path: Path) -> None:
    """--topic cam1 also showed cam10 and cam1x: ZeroMQ's SUBSCRIBE matches a prefix."""
    endpoint = f"ipc://{tmp_path / 'topic.sock'}"
    shades = {"cam1": 255, "cam10": 0, "cam1x": 128}  # each stream's frames are one grey
    options = PublishOptions(parts=("frame",), frame_encoding="png", sndhwm=100)
    publisher = Publisher(endpoint, options)
    labels = np.zeros((6, 8), np.uint8)
    stop = threading.Event()

    def run() -> None:
        i = 0
        while not stop.is_set():
            stream = list(shades)[i % 3]
            publisher.options = replace(options, stream=stream)  # one socket, three streams
            image = np.full((12, 16, 3), shades[stream], np.uint8)
            frame = Frame(image, i, time.time(), time.perf_counter(), "test")
            publisher.publish(frame, SegResult(labels, i, True, 0, CAMVID))
            i += 1
            time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    out = tmp_path / "frames"
    try:
        argv = ["view", f"zmq://{endpoint}", "--topic", "cam1", "--headless", "--all", "--part", "frame"]
        assert main([*argv, "--frames", "6", "--out", str(out), "--timeout", "5"]) == 0
    finally:
        stop.set()
        thread.join(5)
        publisher.close()
    greys = [int(cv2.imread(str(f)).max()) for f in sorted(out.glob("*.png"))]
    assert greys == [255] * 6


def test_all_does_not_promise_every_message(capsys: pytest.CaptureFixture[str]) -> None:
    """--all's help promised every message; a viewer slower than the publisher still misses some
    (its queues are the publisher's hwm), which it counts as gaps."""
    with pytest.raises(SystemExit):
        main(["view", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "every message" not in text
    assert "still misses some" in text and "counted as gaps" in text


def test_topic_must_be_a_stream_id(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["view", f"zmq://{_endpoint()}", "--headless", "--topic", ""])
    assert info.value.code == 2
    assert "argument --topic: expected a stream id (1..64 characters" in capsys.readouterr().err


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
    [
        ("%d%d.png", "is not a valid pattern"),
        ("blocker/x.mp4", "blocker: a file of that name is in the way"),
        ("blocker/sub/x.mp4", "blocker is a file, not a folder"),
        # cv2.imwrite raised cv2.error (a traceback) at the first message for a format it cannot write
        ("frames/%06d.gif", "an image pattern must end in one of .png"),
        # the VideoWriter failed only at the first message, after the wait
        ("clip.mp4", "is a folder; name a video file in it"),
    ],
)
def test_an_unusable_out_is_refused_before_waiting(
    name: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "blocker").write_text("")
    (tmp_path / "clip.mp4").mkdir()
    t0 = time.monotonic()
    argv = ["view", f"zmq://{_endpoint()}", "--headless", "--timeout", "5", "--out", str(tmp_path / name)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 2 and f"--out {tmp_path / name}: " in err and message in err


@pytest.mark.parametrize(
    ("out", "said"), [(None, "here nothing is recorded"), ("frames/%06d.png", "frames/%06d.png is images")]
)
def test_fps_without_a_video_out_is_refused(
    out: str | None, said: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--fps is the frame rate of an --out video: without one it did nothing, silently."""
    argv = ["view", f"zmq://{_endpoint()}", "--headless", "--fps", "10", "--timeout", "5"]
    t0 = time.monotonic()
    assert main(argv + ([] if out is None else ["--out", str(tmp_path / out)])) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 2
    assert "rtseg view: error: --fps is the frame rate of an --out video (.mp4/.m4v/.mov/.mkv/.avi)" in err
    assert said in err


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


class _SignalNotHandled(Exception):
    """What the test's own SIGTERM handler raises if `rtseg view` installed none (the default would
    kill the test process)."""


def _when(condition: Callable[[], bool], action: Callable[[], None]) -> threading.Thread:
    """Run ``action`` on a thread as soon as ``condition`` holds (for at most 5 s)."""

    def wait() -> None:
        deadline = time.monotonic() + 5
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)
        action()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


def _raise_not_handled(signum: int, frame: object) -> None:
    raise _SignalNotHandled


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
@pytest.mark.usefixtures("sigint_delivered")
def test_a_signal_closes_the_recording_and_prints_the_summary(
    sig: signal.Signals,
    code: int,
    live_stream: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGTERM (docker stop, systemd) used to kill `rtseg view` at once: an .mp4 without its index
    (unreadable) and no summary. Ctrl-C ended with status 0 and without the gaps line."""
    previous = signal.signal(signal.SIGTERM, _raise_not_handled)
    out = tmp_path / "view.mp4"
    try:
        # mid-stream: the video was opened at the first frame, about 10 more arrive in 0.2 s
        sender = _when(out.exists, lambda: (time.sleep(0.2), os.kill(os.getpid(), sig)))
        t0 = time.monotonic()
        assert main(["view", live_stream, "--headless", "--out", str(out), "--timeout", "5"]) == code
        elapsed = time.monotonic() - t0
        sender.join(5)
        assert signal.getsignal(signal.SIGTERM) is _raise_not_handled  # view put it back
    finally:
        signal.signal(signal.SIGTERM, previous)
    captured = capsys.readouterr()
    match = re.search(r"rtseg view: (\d+) messages .*, (\d+) shown, written to ", captured.out)
    assert match, captured
    assert "missed by the network/publisher (sequence gaps): 0" in captured.out
    assert "stopped (" in captured.err and "Traceback" not in captured.err
    assert elapsed < 5
    cap = cv2.VideoCapture(str(out))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    shown = int(match.group(2))
    assert shown > 0 and shown <= frames <= shown + 1  # the signal may land between writing and counting


def test_an_out_folder_removed_mid_stream_still_prints_the_summary(
    live_stream: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "frames"
    remover = _when(lambda: len(list(out.glob("*.png"))) >= 3, lambda: shutil.rmtree(out))
    assert main(["view", live_stream, "--headless", "--out", str(out), "--timeout", "5"]) == 2
    remover.join(5)
    captured = capsys.readouterr()
    assert re.search(r"rtseg view: \d+ messages .*, \d+ shown, written to ", captured.out), captured
    assert "cannot write" in captured.err and str(out) in captured.err


def test_a_full_disk_under_a_video_out_is_an_error_not_a_silently_short_video(
    live_stream: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import rtseg.sink.file as file_sink

    real = file_sink.shutil.disk_usage
    calls = [0]

    def filling(folder):  # room for 3 frames, then none
        calls[0] += 1
        usage = real(folder)
        return usage._replace(free=usage.free if calls[0] <= 3 else 0)

    monkeypatch.setattr(file_sink.shutil, "disk_usage", filling)
    out = tmp_path / "v.avi"
    assert main(["view", live_stream, "--headless", "--out", str(out), "--timeout", "5"]) == 2
    captured = capsys.readouterr()
    assert re.search(r"\d+ shown, written to ", captured.out), captured
    assert "too little free space for another frame (0.0 MiB free, " in captured.err
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3  # closed properly: the frames before it are kept
    cap.release()


def test_a_video_out_that_fails_its_close_check_still_gets_the_summary(
    live_stream: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close check's error escaped from the clean-up: no summary, and nothing said of the file."""
    import rtseg.sink.file as file_sink

    real = file_sink.check_finished

    def index_lost(video: Path, frames: int) -> None:
        video.write_bytes(video.read_bytes()[:1000])  # what a full disk at close leaves
        real(video, frames)

    monkeypatch.setattr(file_sink, "check_finished", index_lost)
    out = tmp_path / "v.mp4"
    args = ["view", live_stream, "--headless", "--frames", "6", "--out", str(out), "--timeout", "5"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert re.search(r"rtseg view: 6 messages .*, 6 shown, .*v\.mp4 not written whole", captured.out), (
        captured
    )
    assert "written to" not in captured.out
    assert "not written whole" in captured.err


def test_a_recording_of_the_newest_messages_lasts_as_long_as_the_recording(tmp_path: Path) -> None:
    """Receiving only the newest message skips some; written once each, a 10 fps stream recorded
    at the default 30 fps played three times too fast. Each image is now held until the next
    one's receipt; with --all every message is written once, as before."""
    from rtseg.cli.view_cmd import _open_out, _Shown

    image = np.zeros((48, 64, 3), np.uint8)
    timed = _open_out(tmp_path / "timed.avi", 30.0, timed=True)
    once = _open_out(tmp_path / "once.avi", 30.0, timed=False)
    for i in range(4):  # received 0.1 s apart (10 messages a second)
        for sink in (timed, once):
            sink.write(_Shown(Frame(image + 40 * i, i, time.time(), 100.0 + 0.1 * i, "test"), None))
    assert timed.close().written == once.close().written == 4
    assert timed.video_frames == 10  # 0.3 s at 30 fps, the last frame
    assert once.video_frames == 4
    cap = cv2.VideoCapture(str(tmp_path / "timed.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    cap.release()


def test_out_is_written_by_the_file_sink_on_its_own_thread(
    live_stream: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """view --out re-implemented the file sink (its own rules) and encoded and wrote each image on
    the receive loop; it opens --out with rtseg.open_sink, whose thread writes."""
    import rtseg.sink.file as file_sink

    real, threads = file_sink.write_image, []

    def recording(path: str, image: np.ndarray) -> None:
        threads.append(threading.current_thread())
        real(path, image)

    monkeypatch.setattr(file_sink, "write_image", recording)
    out = tmp_path / "frames"  # no suffix: a folder of PNGs, given to the file sink as frames/%06d.png
    assert (
        main(["view", live_stream, "--headless", "--frames", "4", "--out", str(out), "--timeout", "5"]) == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [f"{i:06d}.png" for i in range(4)]
    assert len(threads) == 4 and threading.main_thread() not in threads
    assert {t.name for t in threads} == {f"sink:{out}/%06d.png"}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        # refused by view as "use a video, a folder, or a pattern"; the file sink says what works
        ("still.png", "an image output writes one file per frame, so its name needs a frame number field"),
        ("clip.avi.part", "cannot tell the format from '.part'"),
    ],
)
def test_out_follows_the_file_sinks_rules(
    name: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["view", f"zmq://{_endpoint()}", "--headless", "--timeout", "5", "--out", str(tmp_path / name)]
    assert main(argv) == 2
    assert f"--out {tmp_path / name}: {message}" in capsys.readouterr().err


def test_out_under_the_home_folder_is_written_there(
    live_stream: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """~ is the home folder, as for `rtseg run`'s outputs; view wrote to a folder named '~' here."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert (
        main(["view", live_stream, "--headless", "--frames", "2", "--out", "~/rec.avi", "--timeout", "5"])
        == 0
    )
    assert (tmp_path / "rec.avi").is_file() and not (tmp_path / "~").exists()


def test_a_video_out_fits_a_stream_whose_frame_size_changes(tmp_path: Path) -> None:
    """The file sink skips a frame of another size as an error; view's videos fit it, as before."""
    from rtseg.cli.view_cmd import _open_out, _Shown

    sink = _open_out(tmp_path / "v.avi", 30.0, timed=False)
    for i, size in enumerate([(48, 64), (96, 128), (48, 64)]):
        sink.write(
            _Shown(Frame(np.full((*size, 3), 40 * i, np.uint8), i, time.time(), float(i), "test"), None)
        )
    stats = sink.close()
    assert stats.written == 3 and stats.errors == 0
    cap = cv2.VideoCapture(str(tmp_path / "v.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 64
    cap.release()


@contextmanager
def _hand_built_publisher(
    image_shape: tuple[int, ...], *, classes: bool, first_seq: int = 0
) -> Iterator[str]:
    """A publisher written from docs/wire-format.md with plain pyzmq and json (no rtseg helpers):
    PNG labels at 60x80, optionally the class set on every message, about 50 messages/s."""
    endpoint = _endpoint()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(endpoint)
    labels = (np.arange(60 * 80).reshape(60, 80) % 11).astype(np.uint8)
    png = cv2.imencode(".png", labels)[1].tobytes()

    def send(seq: int) -> None:
        header = {
            "proto": "rtseg/1",
            "type": "frame",
            "stream": "cam0",
            "seq": first_seq + seq,
            "frame_index": first_seq + seq,
            "capture_ts": time.time(),
            "publish_ts": time.time(),
            "is_keyframe": True,
            "deep_age": 0,
            "timings_ms": {},
            "image_shape": list(image_shape),
            "parts": [{"name": "labels", "encoding": "png", "dtype": "uint8", "shape": [60, 80]}],
        }
        if classes:
            header["classes"] = CAMVID.to_dict()
        pub.send_multipart([b"cam0", json.dumps(header).encode(), png])

    try:
        with _publishing(send):
            yield f"zmq://{endpoint}"
    finally:
        pub.close(linger=0)
        ctx.term()


def test_labels_without_a_class_set_name_the_missing_classes(capsys: pytest.CaptureFixture[str]) -> None:
    """A publisher that never sends classes: the error said 'none of the N messages had a part
    --part labels can show (they carry: labels)', blaming the part that was there."""
    with _hand_built_publisher((60, 80, 3), classes=False) as addr:
        for part in ("auto", "labels"):
            assert main(["view", addr, "--headless", "--frames", "5", "--part", part, "--timeout", "5"]) == 2
            err = " ".join(capsys.readouterr().err.split())
            assert "5 carried labels, but no 'classes'" in err and "the labels have no colours" in err, err
            assert "had a part" not in err


def test_a_viewer_that_joined_late_is_told_classes_come_again_later(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Joining a stream at message 100, after the messages that carried the class set, the viewer
    blamed the publisher alone for sending no 'classes'."""
    with _hand_built_publisher((60, 80, 3), classes=False, first_seq=100) as addr:
        assert main(["view", addr, "--headless", "--frames", "3", "--timeout", "5"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "this viewer joined at message 1" in err and "classes_every" in err and "--frames" in err, err


def test_a_source_over_the_pixel_limit_is_viewed_with_its_labels_drawn_within_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An 18 MP source sending 60x80 labels: every message was refused as too_large (its
    image_shape held to the pixel limit) and view timed out with 'nothing published'."""
    with _hand_built_publisher((3000, 6000, 3), classes=True) as addr:
        assert main(["view", addr, "--headless", "--frames", "3", "--part", "labels", "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert "3 messages" in out and "3 shown" in out and "malformed: 0" in out


def test_labels_are_drawn_at_image_shape_bounded_by_the_pixel_limit() -> None:
    """image_shape is a publisher's claim: drawn as it is, 10^6 x 10^6 would allocate terabytes."""
    from rtseg.cli.view_cmd import _draw_size
    from rtseg.stream.protocol import DEFAULT_MAX_PIXELS

    assert _draw_size((360, 480, 3)) == (480, 360)
    for shape in ((3000, 6000, 3), (10**6, 10**6), (1, 10**9), (2**63 - 1, 2**63 - 1)):
        w, h = _draw_size(shape)
        assert 1 <= w * h <= DEFAULT_MAX_PIXELS, shape
    w, h = _draw_size((3000, 6000, 3))
    assert abs(w / h - 2.0) < 0.01  # the aspect ratio is kept
