from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from rtseg.errors import SourceError
from rtseg.source import open_source

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


def test_loop_restarts_with_increasing_indices(video_file) -> None:
    path, _ = video_file
    with open_source(path, loop=True) as src:
        frames = [f for _, f in zip(range(2 * FRAMES + 5), src, strict=False)]
    assert [f.index for f in frames] == list(range(2 * FRAMES + 5))
    assert frames[FRAMES].position_s == 0.0
    assert np.array_equal(frames[FRAMES].image, frames[0].image)


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


def test_closed_source_stops(video_file) -> None:
    path, _ = video_file
    src = open_source(path)
    next(src)
    src.close()
    assert src.closed
    assert list(src) == []


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
