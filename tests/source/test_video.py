from __future__ import annotations

import functools
import http.server
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg.errors import SourceError
from rtseg.source import open_source
from rtseg.source.live import LiveSource
from rtseg.source.uri import is_recorded_video
from rtseg.source.video import VideoFileSource

FRAMES = 24  # conftest.video_file
SIZE = (160, 96)


def test_file_delivers_every_frame_in_order(video_file) -> None:
    path, images = video_file
    with open_source(path) as src:
        assert src.info.kind == "video" and not src.info.live
        assert src.info.size == SIZE and src.info.fps == pytest.approx(25.0)
        frames = list(src)
    assert [f.index for f in frames] == list(range(FRAMES))
    assert [f.position_s for f in frames] == pytest.approx([i / 25.0 for i in range(FRAMES)])
    # Lossy codec: close to what was written, frame by frame (wrong order would be far off).
    errors = [
        np.abs(f.image.astype(int) - im.astype(int)).mean() for f, im in zip(frames, images, strict=True)
    ]
    assert max(errors) < 12
    assert src.stats.delivered == FRAMES and src.stats.dropped == 0


def test_file_uri_and_plain_path_are_the_same(video_file) -> None:
    path, _ = video_file
    with open_source(f"file://{path}") as a, open_source(str(path)) as b:
        assert [f.index for f in a] == [f.index for f in b]


def test_a_file_name_that_is_not_utf8_is_refused_before_opencv_sees_it(
    video_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cv2.VideoCapture crashed the process (SIGSEGV) on a name that is not valid UTF-8."""
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    folder.mkdir()
    shutil.copyfile(video_file[0], folder / "clip.mp4")

    def no_opencv(*args: object) -> None:
        raise AssertionError(f"cv2.VideoCapture{args} was called")

    monkeypatch.setattr(cv2, "VideoCapture", no_opencv)
    for uri in (str(folder / "clip.mp4"), f"file://{folder}/clip.mp4"):
        with pytest.raises(SourceError, match=r"caf\\xe9/clip\.mp4: the name 'caf\\xe9' is not valid UTF-8"):
            open_source(uri)


def test_loop_restarts_with_increasing_indices(video_file) -> None:
    path, _ = video_file
    with open_source(path, loop=True) as src:
        frames = [f for _, f in zip(range(2 * FRAMES + 5), src, strict=False)]
    assert [f.index for f in frames] == list(range(2 * FRAMES + 5))
    assert [f.index for f in frames if f.discontinuity] == [FRAMES, 2 * FRAMES]
    assert frames[FRAMES].position_s == 0.0
    assert np.array_equal(frames[FRAMES].image, frames[0].image)


def test_a_looped_file_removed_during_the_run_is_named_as_missing(video_file, tmp_path: Path) -> None:
    # reopening it for the next pass said "cannot open ... as a video: ... It may not be a video"
    path = tmp_path / "clip.mp4"
    shutil.copy(video_file[0], path)
    with open_source(path, loop=True) as src:
        frames = iter(src)
        next(frames)
        path.unlink()
        with pytest.raises(SourceError, match=r"video file not found: .*clip\.mp4 \(removed while looping"):
            for _ in range(2 * FRAMES):
                next(frames)


def test_resize_and_rate(video_file) -> None:
    path, _ = video_file
    with open_source(path, resize=(80, 48), rate=5) as src:
        frames = list(src)
    assert all(f.image.shape == (48, 80, 3) for f in frames)
    # 24 frames at 25 fps thinned to 5 per second of media time: one frame in five.
    assert [f.index for f in frames] == [0, 5, 10, 15, 20]
    assert src.stats.dropped == 0  # thinning on request is not dropping


def test_realtime_drops_frames_a_slow_consumer_cannot_keep_up_with(video_file) -> None:
    path, _ = video_file
    with open_source(path, realtime=True) as src:
        assert src.info.live
        start = time.perf_counter()
        got = []
        for frame in src:
            got.append(frame.index)
            time.sleep(0.1)  # 10 fps consumer, 25 fps media
        elapsed = time.perf_counter() - start
    assert got[0] == 0 and got == sorted(got)
    assert len(got) < FRAMES * 0.7
    assert src.stats.dropped == FRAMES - len(got)
    assert elapsed < FRAMES / 25.0 + 0.5  # paced by media time, not by decoding everything late


def test_realtime_paces_a_fast_consumer(video_file) -> None:
    path, _ = video_file
    with open_source(path, realtime=True) as src:
        start = time.perf_counter()
        frames = [f for _, f in zip(range(10), src, strict=False)]
        elapsed = time.perf_counter() - start
    assert [f.index for f in frames] == list(range(10))
    assert elapsed >= 9 / 25.0 - 0.02


def test_a_variable_frame_rate_video_is_timed_by_its_timestamps(vfr_video) -> None:
    # position_s was index/fps: frame 6, at 0.24 s, said 0.48 s (12.5 fps, the clip's average).
    path, times = vfr_video
    with open_source(path) as src:
        assert [f.position_s for f in src] == pytest.approx(times)
    with open_source(path, loop=True) as src:  # the next pass starts one (last) interval later
        assert [f.position_s for _, f in zip(range(13), src, strict=False)][-1] == 0.0


def test_a_variable_frame_rate_video_is_paced_and_thinned_by_its_timestamps(vfr_video) -> None:
    path, times = vfr_video
    with open_source(path, realtime=True) as src:
        frames = list(src)
    # each frame at its own time after the first (index/fps had frame 6 0.24 s late)
    late = [f.monotonic - frames[0].monotonic - times[f.index] for f in frames]
    assert all(-0.005 < x < 0.12 for x in late), late
    # rate 5: the first frame in each 0.2 s slot of media time, by the frames' times (at 0, 0.2,
    # 0.48, 0.6 and 0.84 s); index/fps, 0.08 s a frame, kept 0, 3, 5, 8 and 10
    with open_source(path, rate=5) as src:
        assert [f.index for f in src] == [0, 5, 8, 9, 11]
    # rate 10: frame 7 (0.36 s) is alone in its slot, but was skipped by its predicted time (0.28 s,
    # the last interval added) before the clip slowed down; it is decoded once its time is known
    with open_source(path, rate=10) as src:
        assert [f.index for f in src] == [0, 3, 5, 7, 8, 9, 10, 11]


class _NoTimestamps:
    """A capture whose container gives no frame times (CAP_PROP_POS_MSEC is 0 throughout)."""

    def __init__(self, cap: cv2.VideoCapture) -> None:
        self.cap = cap

    def get(self, prop: int) -> float:
        return 0.0 if prop == cv2.CAP_PROP_POS_MSEC else self.cap.get(prop)

    def __getattr__(self, name: str) -> object:
        return getattr(self.cap, name)


def test_a_video_without_timestamps_is_timed_by_index_and_fps(video_file) -> None:
    path, _ = video_file
    with open_source(path) as src:
        src._cap = _NoTimestamps(src._cap)
        assert [f.position_s for f in src] == pytest.approx([i / 25.0 for i in range(FRAMES)])


def test_a_high_speed_video_keeps_its_frame_rate(tmp_path: Path, caplog) -> None:
    # 1000 fps and more was taken as 30 fps, silently: paced 40 times too slowly at 1200 fps.
    path = tmp_path / "fast.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 1200.0, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 60 * i, np.uint8))
    writer.release()
    with caplog.at_level(logging.WARNING), open_source(path) as src:
        assert src.info.fps == pytest.approx(1200)
        assert [f.position_s for f in src] == pytest.approx([0, 1 / 1200, 2 / 1200])
    assert caplog.text == ""


@pytest.mark.parametrize("reported", [0.0, -25.0, float("nan"), float("inf")])
def test_a_video_without_a_usable_frame_rate_is_taken_as_30_fps_and_says_so(
    video_file, monkeypatch, caplog, reported: float
) -> None:
    from rtseg.source import video

    class NoRate(_NoTimestamps):
        def get(self, prop: int) -> float:
            return reported if prop == cv2.CAP_PROP_FPS else super().get(prop)

    opened = video._open
    monkeypatch.setattr(video, "_open", lambda target, timeout: NoRate(opened(target, timeout)))
    with caplog.at_level(logging.WARNING), open_source(video_file[0]) as src:
        assert src.info.fps == 30.0
    assert f"reports a frame rate of {reported:g}; 30 fps is assumed" in caplog.text


def test_truncated_mp4_without_index_is_a_clear_error(video_file, tmp_path: Path) -> None:
    # OpenCV writes the mp4 index (moov) last: cut the file and it is gone.
    path, _ = video_file
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="truncated") as err:
        open_source(cut)
    assert str(cut) in str(err.value)


def test_truncated_mp4_ends_midway_cleanly(video_file, make_faststart, tmp_path: Path, caplog) -> None:
    # A streaming-style (faststart) mp4 cut in the middle of its media data: frames up to the cut.
    path, _ = video_file
    fixed = make_faststart(path.read_bytes())
    full = tmp_path / "full.mp4"
    full.write_bytes(fixed)
    with open_source(full) as src:
        assert sum(1 for _ in src) == FRAMES
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(fixed[: len(fixed) * 6 // 10])
    with caplog.at_level(logging.WARNING, logger="rtseg.source.video"), open_source(cut) as src:
        frames = list(src)  # ends with StopIteration, not an exception
    assert 0 < len(frames) < FRAMES
    assert [f.index for f in frames] == list(range(len(frames)))
    assert "truncated" in caplog.text


def test_nonexistent_path_names_it_and_the_schemes(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(SourceError) as err:
        open_source(missing)
    text = str(err.value)
    assert str(missing) in text and "rtsp://" in text and "synthetic://" in text


def test_not_a_video(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video")
    with pytest.raises(SourceError, match="cannot open"):
        open_source(bogus)


def test_closed_source_refuses_to_read(video_file) -> None:
    """Reading a closed source gave 0 frames, silently, like an empty stream; a closed file raises."""
    path, _ = video_file
    src = open_source(path)
    next(src)
    src.close()
    assert src.closed
    with pytest.raises(SourceError, match=rf"{path}: the source is closed"):
        next(src)
    with pytest.raises(SourceError, match="the source is closed"):
        list(src)


def test_a_source_cannot_be_reentered_after_its_with_block(video_file) -> None:
    path, _ = video_file
    with open_source(path) as src:
        assert len(list(src)) == FRAMES
        assert list(src) == []  # the end of the stream is an end, again and again, while open
    with pytest.raises(SourceError, match="the source is closed"), src:
        pass


def test_a_video_that_decodes_no_frame_is_an_error(video_file, make_faststart, tmp_path: Path) -> None:
    """It opened (the index is intact) and ended at once: a run reported "complete" with 0 frames."""
    fixed = make_faststart(video_file[0].read_bytes())
    cut = tmp_path / "headless.mp4"
    cut.write_bytes(fixed[: fixed.index(b"mdat") + 16])  # the index, and no whole frame after it
    message = rf"{cut}: no frame could be decoded \(its header announces 24\)"
    for options in ({}, {"loop": True}, {"rate": 5}, {"realtime": True}):
        with open_source(cut, **options) as src, pytest.raises(SourceError, match=message):
            next(src)


@pytest.mark.data
def test_real_dashcam_clip_has_221_frames(data_root: Path) -> None:
    path = data_root / "video" / "solidWhiteRight.mp4"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open_source(path) as src:
        assert src.info.frame_count == 221 and src.info.size == (960, 540)
        assert sum(1 for _ in src) == 221


def test_looped_one_frame_clip_is_paced_at_its_frame_rate(one_frame_video: Path) -> None:
    # Media time runs on across passes: a realtime loop of a 1-frame clip is a 25 fps stream.
    with open_source(one_frame_video, loop=True, realtime=True) as src:
        start = time.perf_counter()
        frames = [f for _, f in zip(range(6), src, strict=False)]
        elapsed = time.perf_counter() - start
    assert [f.index for f in frames] == list(range(6))
    assert elapsed >= 5 / 25.0 - 0.02


def test_rate_holds_across_loop_passes(one_frame_video: Path) -> None:
    with open_source(one_frame_video, loop=True, rate=5) as src:
        frames = [f for _, f in zip(range(4), src, strict=False)]
    # one frame per 1/25 s pass, thinned to 5 per second of media time: every fifth pass
    assert [f.index for f in frames] == [0, 5, 10, 15]


# Recorded videos over HTTP: read like local files, every frame in order.

WEB_FRAMES = 40
WEB_SIZE = (64, 48)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def video_server(
    tmp_path_factory: pytest.TempPathFactory, video_file, make_faststart, serve_http
) -> Iterator[str]:
    """A local web server with /clip.mp4 (40 flat 64x48 frames, frame i of grey value 6*i), the
    same bytes at /live (no extension) and /cut.mp4, the streaming-style conftest video cut mid-way."""
    root = tmp_path_factory.mktemp("web")
    fixed = make_faststart(video_file[0].read_bytes())
    (root / "cut.mp4").write_bytes(fixed[: len(fixed) * 6 // 10])
    clip = root / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, WEB_SIZE)
    if not writer.isOpened():
        pytest.fail("OpenCV cannot write mp4v here")
    for i in range(WEB_FRAMES):
        writer.write(np.full((WEB_SIZE[1], WEB_SIZE[0], 3), 6 * i, np.uint8))
    writer.release()
    shutil.copyfile(clip, root / "live")
    with serve_http(functools.partial(_QuietHandler, directory=str(root))) as url:
        yield url


@pytest.mark.parametrize(
    ("url", "recorded"),
    [
        ("http://host/clips/drive.mp4", True),
        ("https://host/a/b/DRIVE.MKV", True),
        ("http://host/clip.webm?token=abc&expires=1", True),
        ("http://user:pw@host:8080/x.mov", True),
        ("http://host/stream.mjpg", False),
        ("https://host/live/playlist.m3u8", False),
        ("http://host/watch?file=clip.mp4", False),  # the query is the server's, not the path
        ("http://host/clip.mp4/live", False),
        ("rtsp://host/clip.mp4", False),  # rtsp is always live
    ],
)
def test_which_urls_are_recorded_videos(url: str, recorded: bool) -> None:
    assert is_recorded_video(url) is recorded


def test_recorded_video_over_http_delivers_every_frame_in_order(video_server: str) -> None:
    with open_source(f"{video_server}/clip.mp4", timeout=2) as src:
        assert isinstance(src, VideoFileSource)
        assert src.info.kind == "video" and not src.info.live and src.info.size == WEB_SIZE
        assert tuple(src.files) == ()  # no local file to guard against overwriting
        frames = []
        for frame in src:
            frames.append(frame)
            time.sleep(0.005)  # a consumer slower than decoding loses nothing
    assert [f.index for f in frames] == list(range(WEB_FRAMES))
    # frame i is grey 6*i, give or take the codec's colour-range rounding: in order, none repeated
    means = np.array([f.image.mean() for f in frames])
    assert np.all(np.abs(means - 6 * np.arange(WEB_FRAMES)) < 4) and np.all(np.diff(means) > 3)
    assert src.stats.delivered == WEB_FRAMES and src.stats.dropped == 0


def test_query_string_does_not_hide_a_recorded_video(video_server: str) -> None:
    with open_source(f"{video_server}/clip.mp4?token=abc", timeout=2) as src:
        assert isinstance(src, VideoFileSource)
        assert [f.index for f in src] == list(range(WEB_FRAMES))


def test_recorded_video_over_http_loops_by_reopening(video_server: str) -> None:
    with open_source(f"{video_server}/clip.mp4", loop=True, timeout=2) as src:
        frames = [f for _, f in zip(range(WEB_FRAMES + 10), src, strict=False)]
    assert [f.index for f in frames] == list(range(WEB_FRAMES + 10))
    assert frames[WEB_FRAMES].position_s == 0.0 and float(frames[WEB_FRAMES].image.mean()) < 3


def test_missing_recorded_video_says_404_quickly(video_server: str) -> None:
    url = f"{video_server}/missing.mp4"
    start = time.perf_counter()
    with pytest.raises(SourceError, match="404") as err:
        open_source(url, timeout=2)
    assert time.perf_counter() - start < 2.0
    assert url in str(err.value)


def test_recorded_video_with_nothing_behind_it_says_the_connection_was_refused() -> None:
    # It said "FFmpeg could not open it as a video within 1 s" after 0.00 s.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(SourceError) as err:
        open_source(f"http://127.0.0.1:{port}/clip.mp4", timeout=1)
    assert f"the connection to 127.0.0.1:{port} was refused" in str(err.value)
    assert "within" not in str(err.value)


@pytest.mark.parametrize("path", ["clip.mp4", "stream"])  # a recorded video, a live stream
def test_a_silent_server_is_given_up_on_after_one_timeout(silent_server: str, path: str) -> None:
    # FFmpeg's open used the whole timeout, then asking the server why waited a second one.
    start = time.perf_counter()
    with pytest.raises(SourceError, match=r"nothing answered .*within 1\.5 s"):
        open_source(f"{silent_server}/{path}", timeout=1.5)
    assert time.perf_counter() - start < 2.4  # 1.5 s, not 3


def test_url_without_video_extension_stays_live(video_server: str) -> None:
    with open_source(f"{video_server}/live", timeout=2) as src:
        assert isinstance(src, LiveSource)
        assert src.info.live and src.info.kind == "stream"


def test_truncated_recorded_video_warning_hides_credentials(video_server: str, caplog) -> None:
    url = video_server.replace("http://", "http://user:secret@") + "/cut.mp4?token=hush"
    with caplog.at_level(logging.WARNING, logger="rtseg.source.video"), open_source(url, timeout=2) as src:
        frames = list(src)
    assert 0 < len(frames) < FRAMES
    assert "truncated" in caplog.text and "/cut.mp4" in caplog.text
    assert "secret" not in caplog.text and "hush" not in caplog.text


def test_a_signal_ends_the_wait_for_a_recorded_video_server_that_never_answers(
    silent_server: str, interrupt_in
) -> None:
    # FFmpeg's open blocks in C: on the caller's thread, Ctrl-C waited out the whole open timeout.
    interrupt_in(0.3)
    start = time.perf_counter()
    with pytest.raises(interrupt_in.error):
        open_source(f"{silent_server}/clip.mp4", timeout=4.0)
    took = time.perf_counter() - start
    assert took < 1.5
