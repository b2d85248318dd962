from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg.errors import SinkError
from rtseg.overlay import OverlayStyle
from rtseg.sink.file import FileSink


def _read_all(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames


@pytest.mark.parametrize("name", ["out.mp4", "out.avi", "out.mkv"])
def test_video_has_every_frame(tmp_path: Path, packet_factory, name: str) -> None:
    path = tmp_path / "sub" / name
    sink = FileSink(str(path), path, fps=25)
    for i in range(12):
        sink.write(packet_factory(i))
    stats = sink.close()
    assert stats.written == 12 and stats.dropped == 0 and stats.errors == 0 and stats.emit_ms > 0
    frames = _read_all(path)
    assert len(frames) == 12 and frames[0].shape == (48, 64, 3)


def test_side_by_side_doubles_the_width(tmp_path: Path, packet_factory) -> None:
    path = tmp_path / "sbs.mp4"
    sink = FileSink(str(path), path)
    for i in range(3):
        sink.write(packet_factory(i, style=OverlayStyle(mode="side-by-side")))
    sink.close()
    assert _read_all(path)[0].shape == (48, 128, 3)


def test_image_pattern_named_by_frame_index(tmp_path: Path, packet_factory) -> None:
    pattern = tmp_path / "frames" / "%04d.png"
    sink = FileSink(str(pattern), pattern)
    for i in (3, 4, 7):
        sink.write(packet_factory(i, style=OverlayStyle(mode="mask")))
    sink.close()
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == ["0003.png", "0004.png", "0007.png"]
    mask = cv2.imread(str(tmp_path / "frames" / "0003.png"))
    assert tuple(mask[0, 0]) == (128, 64, 128)  # CamVid road colour, BGR


def test_label_maps_are_written_losslessly(tmp_path: Path, packet_factory) -> None:
    pattern = tmp_path / "labels_%03d.png"
    sink = FileSink(str(pattern), pattern, content="labels")
    packet = packet_factory(5)
    sink.write(packet)
    sink.close()
    back = cv2.imread(str(tmp_path / "labels_005.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(back, packet.result.labels)


def test_block_policy_writes_everything_behind_a_slow_disk(tmp_path: Path, packet_factory) -> None:
    class Slow(FileSink):
        def emit(self, packet) -> None:
            import time

            time.sleep(0.01)
            super().emit(packet)

    path = tmp_path / "slow.avi"
    sink = Slow(str(path), path, queue_size=2, policy="block")
    for i in range(20):
        sink.write(packet_factory(i))
    assert sink.close().written == 20
    assert len(_read_all(path)) == 20


@pytest.mark.parametrize(
    "name, message",
    [
        ("out.gif", "cannot tell the format"),
        ("out", "cannot tell the format"),
        ("out/%d%d.png", "not a valid pattern"),
        ("out/%06d.mp4", "image pattern must end"),
    ],
)
def test_bad_paths(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(SinkError, match=message):
        FileSink(name, tmp_path / name)


def test_labels_need_png_and_fourcc_is_checked(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="PNG"):
        FileSink("x.mp4", tmp_path / "x.mp4", content="labels")
    with pytest.raises(SinkError, match="fourcc"):
        FileSink("x.mp4", tmp_path / "x.mp4", fourcc="H264X")


def test_size_change_is_reported_not_hidden(tmp_path: Path, packet_factory) -> None:
    path = tmp_path / "x.avi"
    sink = FileSink(str(path), path)
    sink.write(packet_factory(0))
    sink.write(packet_factory(1, size=(32, 24)))
    stats = sink.close()
    assert stats.written == 1 and stats.errors == 1 and "size changed" in stats.last_error


def test_a_folder_named_like_a_video_is_refused(tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").mkdir()
    with pytest.raises(SinkError, match="is a folder"):
        FileSink("clip.mp4", tmp_path / "clip.mp4")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc, a folder nobody can write in")
def test_an_unwritable_folder_fails_before_the_first_frame() -> None:
    with pytest.raises(SinkError, match="cannot write in /proc"):
        FileSink("/proc/out.mp4", "/proc/out.mp4")
