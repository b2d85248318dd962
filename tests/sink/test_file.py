from __future__ import annotations

import logging
import os
import time
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


def test_a_video_name_that_is_not_utf8_is_refused_before_anything_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cv2.VideoWriter crashed the process (SIGSEGV) at the first frame on such a name."""

    def no_opencv(*args: object) -> None:
        raise AssertionError(f"cv2.VideoWriter{args} was called")

    monkeypatch.setattr(cv2, "VideoWriter", no_opencv)
    path = tmp_path / os.fsdecode(b"caf\xe9") / "o.mp4"
    with pytest.raises(SinkError, match=r"caf\\xe9/o\.mp4: the name 'caf\\xe9' is not valid UTF-8"):
        FileSink(str(path), path)
    assert not path.parent.exists()


def test_an_image_pattern_in_a_folder_that_is_not_utf8_is_written(tmp_path: Path, packet_factory) -> None:
    # Images are encoded in memory and written by Python, which takes any name.
    pattern = tmp_path / os.fsdecode(b"caf\xe9") / "%02d.png"
    sink = FileSink(str(pattern), pattern)
    for i in range(2):
        sink.write(packet_factory(i))
    sink.close()
    assert sorted(p.name for p in pattern.parent.iterdir()) == ["00.png", "01.png"]


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
        ("out/%s.png", "not a valid pattern"),  # a string field: not a frame index
        ("out/%06d-%.png", "not a valid pattern"),
        ("out.mp4?fourcc=XVID", "file outputs take no \\?options; the codec follows the suffix"),
        ("out/%06d.mp4", "image pattern must end"),
        ("o_%03d/x_%03d.png", "o_%03d' holds a '%'; only the file name"),  # imwrite formats the folder too
        ("o_%03d/x.png", "o_%03d' holds a '%'; only the file name"),
        ("o/frame.png", r"needs a frame number field: .*o/frame_%06d\.png"),  # not "cannot tell the format"
    ],
)
def test_bad_paths(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(SinkError, match=message):
        FileSink(name, tmp_path / name)


def test_labels_need_a_lossless_image_and_fourcc_is_checked(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="losslessly only as images"):
        FileSink("x.mp4", tmp_path / "x.mp4", content="labels")
    for lossy in ("x_%03d.jpg", "x_%03d.jpeg", "x_%03d.webp"):  # a JPEG changed 19 % of the class ids
        with pytest.raises(SinkError, match="compressed with loss, which changes class ids"):
            FileSink(lossy, tmp_path / lossy, content="labels")
    for lossless in ("x_%03d.png", "x_%03d.bmp", "x_%03d.tif"):
        FileSink(lossless, tmp_path / lossless, content="labels").close()
    with pytest.raises(SinkError, match="fourcc"):
        FileSink("x.mp4", tmp_path / "x.mp4", fourcc="H264X")


def test_size_change_is_reported_not_hidden(tmp_path: Path, packet_factory) -> None:
    path = tmp_path / "x.avi"
    sink = FileSink(str(path), path)
    sink.write(packet_factory(0))
    sink.write(packet_factory(1, size=(32, 24)))
    stats = sink.close()
    assert stats.written == 1 and stats.errors == 1
    assert "32x24 frame in a 64x48 video was skipped" in stats.last_error and "--resize" in stats.last_error


def _touch(folder: Path, *names: str) -> set[Path]:
    for name in names:
        (folder / name).write_bytes(b"")
    return {(folder / n).resolve() for n in names}


def test_first_overwrite_of_a_video_is_its_own_path(tmp_path: Path) -> None:
    inputs = _touch(tmp_path, "a.mp4", "b.mp4")
    with FileSink("a", tmp_path / "a.mp4") as a, FileSink("c", tmp_path / "c.mp4") as c:
        assert a.first_overwrite(inputs, 2) == (tmp_path / "a.mp4").resolve()
        assert c.first_overwrite(inputs, None) is None


def test_first_overwrite_of_a_pattern_covers_the_frames_that_will_be_written(tmp_path: Path) -> None:
    inputs = _touch(tmp_path, "000005.png", "000006.png")
    with FileSink("p", tmp_path / "%06d.png") as sink:
        assert sink.first_overwrite(inputs, 2) is None  # indices 0 and 1 only
        assert sink.first_overwrite(inputs, 6) == (tmp_path / "000005.png").resolve()
        assert sink.first_overwrite(inputs, None) == (tmp_path / "000005.png").resolve()  # looping


@pytest.mark.parametrize(
    ("pattern", "names", "clash"),
    [
        ("o%06d.png", ["000005.png", "o5.png"], None),  # o5.png is not what %06d writes
        ("o%d.png", ["o5.png"], "o5.png"),
        ("f%03x.png", ["f00a.png", "f010.png"], "f00a.png"),
        ("%%%04d.png", ["%0012.png"], "%0012.png"),
        ("%04d.jpg", ["0012.png"], None),
    ],
)
def test_first_overwrite_of_a_pattern_without_end(
    tmp_path: Path, pattern: str, names: list[str], clash: str | None
) -> None:
    expected = None if clash is None else (tmp_path / clash).resolve()
    with FileSink("p", tmp_path / pattern) as sink:
        assert sink.first_overwrite(_touch(tmp_path, *names), None) == expected


def test_a_folder_named_like_a_video_is_refused(tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").mkdir()
    with pytest.raises(SinkError, match="is a folder"):
        FileSink("clip.mp4", tmp_path / "clip.mp4")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc, a folder nobody can write in")
def test_an_unwritable_folder_fails_before_the_first_frame() -> None:
    with pytest.raises(SinkError, match="cannot write in /proc"):
        FileSink("/proc/out.mp4", "/proc/out.mp4")


def test_a_full_disk_is_reported_and_the_video_keeps_its_frames(
    tmp_path: Path, packet_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import rtseg.sink.file as file_sink

    path = tmp_path / "full.mp4"
    sink = FileSink(str(path), path)
    real = shutil.disk_usage
    calls = [0]

    def filling(folder):  # 5 frames fit, then the disk is full
        calls[0] += 1
        usage = real(folder)
        return usage._replace(free=usage.free if calls[0] <= 5 else 4096)

    monkeypatch.setattr(file_sink.shutil, "disk_usage", filling)
    for i in range(8):
        sink.write(packet_factory(i))
    stats = sink.close()
    assert stats.written == 5 and stats.errors == 3
    # Not "the disk is full" (the reserve is refused first), and readable only if the index fits.
    assert "too little free space for another frame (0.0 MiB free, " in stats.last_error
    assert "2 frames and 1 MiB for the video's index" in stats.last_error
    assert "the 5 frames already in it stay readable if the index still fits then" in stats.last_error
    assert len(_read_all(path)) == 5


def test_an_odd_frame_size_is_warned_about(tmp_path: Path, packet_factory, caplog) -> None:
    path = tmp_path / "odd.avi"
    sink = FileSink(str(path), path)
    with caplog.at_level("WARNING", logger="rtseg.sink.file"):
        sink.write(packet_factory(0, size=(33, 24)))
        stats = sink.close()
    assert stats.written == 1
    assert "33x24 frames as 32x24 (even sizes only)" in caplog.text
    assert _read_all(path)[0].shape == (24, 32, 3)  # what the warning says happens


@pytest.mark.parametrize("fit", [True, False])
def test_a_video_file_fits_or_refuses_a_frame_of_another_size(tmp_path: Path, fit: bool) -> None:
    """The one video writer of FileSink and `rtseg view --out`: a stream (view) is fitted to the
    video's size, a recording (the sink) says what was skipped."""
    from rtseg.sink.file import VideoFile

    path = tmp_path / "v.avi"
    video = VideoFile(path, 10.0, fit=fit)
    video.write(np.full((48, 64, 3), 90, np.uint8))
    if fit:
        video.write(np.full((24, 32, 3), 90, np.uint8))
    else:
        with pytest.raises(SinkError, match="32x24 frame in a 64x48 video was skipped"):
            video.write(np.full((24, 32, 3), 90, np.uint8))
    video.close()
    video.close()  # idempotent
    frames = _read_all(path)
    assert len(frames) == video.frames == (2 if fit else 1)
    assert all(f.shape == (48, 64, 3) for f in frames)


def test_a_video_name_with_a_percent_is_a_plain_name(tmp_path: Path, packet_factory) -> None:
    """'o_100%.mp4' was refused as an image pattern: only an image suffix makes a pattern."""
    path = tmp_path / "o_100%.mp4"
    sink = FileSink(str(path), path)
    sink.write(packet_factory(0))
    assert not sink.pattern and sink.close().written == 1
    assert len(_read_all(path)) == 1


def test_a_pattern_with_a_percent_in_its_folder_makes_no_folder(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="only the file name of an image pattern may"):
        FileSink("p", tmp_path / "o_%03d" / "x_%03d.png")
    assert not (tmp_path / "o_%03d").exists()


@pytest.mark.parametrize("fps", [0, -1, float("inf"), float("nan"), True])
def test_fps_must_be_positive_and_finite(tmp_path: Path, fps: float) -> None:
    """fps=inf was taken, and then the VideoWriter refused every frame."""
    with pytest.raises(SinkError, match="fps must be None or a positive finite number"):
        FileSink("x.avi", tmp_path / "x.avi", fps=fps)


def test_a_home_relative_path_is_under_home(tmp_path: Path, monkeypatch, packet_factory) -> None:
    """'~/out.avi' wrote ./~/out.avi; source paths expand '~', and so do outputs now."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    sink = FileSink("~/out.avi", "~/out.avi")
    sink.write(packet_factory(0))
    sink.close()
    assert sink.path == tmp_path / "home" / "out.avi" and len(_read_all(sink.path)) == 1
    assert not (tmp_path / "~").exists()


def test_first_overwrite_sees_a_hard_link_to_an_input(tmp_path: Path) -> None:
    """Resolved paths differ for two names of one file: writing one destroyed the input."""
    (tmp_path / "in").mkdir()
    inputs = _touch(tmp_path / "in", "a.mp4", "000003.png")
    (tmp_path / "hard.mp4").hardlink_to(tmp_path / "in" / "a.mp4")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "000003.png").hardlink_to(tmp_path / "in" / "000003.png")
    (tmp_path / "out" / "000004.png").symlink_to(tmp_path / "in" / "000003.png")
    with (
        FileSink("v", tmp_path / "hard.mp4") as video,
        FileSink("p", tmp_path / "out" / "%06d.png") as images,
    ):
        assert video.first_overwrite(inputs, 3) == (tmp_path / "in" / "a.mp4").resolve()
        assert images.first_overwrite(inputs, 3) is None  # frames 0..2 only
        assert images.first_overwrite(inputs, 4) == (tmp_path / "in" / "000003.png").resolve()
        assert images.first_overwrite(inputs, None) == (tmp_path / "in" / "000003.png").resolve()
        (tmp_path / "out" / "000003.png").unlink()  # the symbolic link 000004.png is found, too
        assert images.first_overwrite(inputs, None) == (tmp_path / "in" / "000003.png").resolve()


def test_the_mount_holding_a_path_gives_its_filesystem_type() -> None:
    from rtseg.sink.file import mount_type

    mounts = (
        "/dev/root / ext4 rw 0 0\n"
        "/dev/mmcblk0p1 /media/sd\\040card vfat rw 0 0\n"
        "/dev/sda1 /media/sd ext4 rw 0 0\n"
    )
    assert mount_type(Path("/media/sd card/drive/out.mp4"), mounts) == "vfat"
    assert mount_type(Path("/media/sd card"), mounts) == "vfat"
    assert mount_type(Path("/media/sd/out.mp4"), mounts) == "ext4"
    assert mount_type(Path("/media/sdx/out.mp4"), mounts) == "ext4"  # "/", not "/media/sd"
    assert mount_type(Path("/tmp/out.mp4"), "") is None


def test_the_file_size_limit_skips_frames_and_keeps_the_video_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ulimit -f or a FAT card's 4 GiB, which free space does not show: FFmpeg's writes past it
    fail unseen and an .mp4 without its index loses every frame."""
    import rtseg.sink.file as file_sink

    monkeypatch.setattr(file_sink, "file_size_limit", lambda folder: 1_600_000)
    path = tmp_path / "limited.mp4"
    video = file_sink.VideoFile(path, 10.0)
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(120):  # noise: about 22 kB a frame, 2.6 MB in all
        try:
            video.write(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
        except SinkError as exc:
            errors.append(str(exc))
    video.close()
    assert 0 < video.frames < 120 and len(errors) == 120 - video.frames
    assert "the file size limit (1.5 MiB" in errors[0] and "frame skipped" in errors[0]
    assert f"the {video.frames} frames already in it stay readable (write an image pattern" in errors[0]
    assert len(_read_all(path)) == video.frames and path.stat().st_size < 1_600_000


def test_a_video_that_refuses_its_first_frame_does_not_say_frames_stay_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a limit below one frame every frame was refused with "the frames before it stay
    readable", and nothing was written."""
    import shutil

    import rtseg.sink.file as file_sink

    image = np.zeros((240, 320, 3), np.uint8)
    monkeypatch.setattr(file_sink, "file_size_limit", lambda folder: 1000)
    video = file_sink.VideoFile(tmp_path / "none.mp4", 10.0)
    with pytest.raises(
        SinkError,
        match=r"frame skipped; nothing is written yet \(write an image pattern, or raise the limit\)$",
    ):
        video.write(image)
    video.close()
    full = shutil.disk_usage(tmp_path)._replace(free=4096)
    monkeypatch.setattr(file_sink.shutil, "disk_usage", lambda folder: full)
    with pytest.raises(SinkError, match=r"frame skipped; nothing is written yet$"):
        file_sink.check_room_for_frame(tmp_path / "none.mp4", image, 0)
    with pytest.raises(SinkError, match=r"frame skipped; the 1 frame already in it stays readable if"):
        file_sink.check_room_for_frame(tmp_path / "none.mp4", image, 1)


_RLIMIT_SCRIPT = """
import resource, sys
import numpy as np
import rtseg.sink.file as file_sink
from rtseg.errors import SinkError
if sys.argv[2] == "unchecked":  # only the check at close can see what went wrong
    file_sink.file_size_limit = lambda folder: None
resource.setrlimit(resource.RLIMIT_FSIZE, (1_600_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
video = file_sink.VideoFile(file_sink.Path(sys.argv[1]), 10.0)
rng = np.random.default_rng(0)
errors = []
for _ in range(120):
    try:
        video.write(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    except SinkError as exc:
        errors.append(str(exc))
try:
    video.close()
except SinkError as exc:
    errors.append(str(exc))
print(video.frames)
print(errors[-1] if errors else "")
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize("mode", ["checked", "unchecked"])
def test_a_real_ulimit_is_seen_before_it_costs_the_video(tmp_path: Path, mode: str) -> None:
    """In a child process under ``ulimit -f``: refused frames before the limit; and were the limit
    not known, the check at close says the video was not written whole, not 'wrote N frames'."""
    import subprocess
    import sys

    path = tmp_path / "ulimit.mp4"
    out = subprocess.run(
        [sys.executable, "-c", _RLIMIT_SCRIPT, str(path), mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    written, last_error = int(out[0]), out[1]
    if mode == "checked":
        assert 0 < written < 120 and "the file size limit" in last_error
        assert len(_read_all(path)) == written
    else:
        assert written == 120 and "the video was not written whole" in last_error


_IMAGE_LIMIT_SCRIPT = """
import os, resource, sys
import numpy as np
from rtseg.errors import SinkError
from rtseg.sink.file import write_image
folder, suffix = sys.argv[1], sys.argv[2]
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)  # about 780 kB
for i, image in enumerate([noise[:48, :64], noise]):
    try:
        write_image(os.path.join(folder, f"{i:04d}{suffix}"), image)
    except SinkError as exc:
        print(exc)
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize("suffix", [".tif", ".png", ".bmp"])
def test_a_failed_image_write_leaves_no_file_named_as_a_frame(tmp_path: Path, suffix: str) -> None:
    """In a child process under ``ulimit -f`` (a write that fails part way, as on a full disk):
    cv2.imwrite returned False but left a truncated, unreadable 0001.tif behind."""
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _IMAGE_LIMIT_SCRIPT, str(tmp_path), suffix],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert f"cannot write {tmp_path / ('0001' + suffix)}: File too large" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000" + suffix]  # no partial, no temporary
    assert cv2.imread(str(tmp_path / ("0000" + suffix))).shape == (48, 64, 3)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / ("0000" + suffix)).stat().st_mode & 0o777 == 0o666 & ~umask  # as imwrite made it


def _at(packet, seconds: float):  # type: ignore[no-untyped-def]
    """``packet`` with its frame captured at ``seconds`` (perf_counter time)."""
    from dataclasses import replace

    from rtseg.sink.packet import Packet

    return Packet(replace(packet.frame, monotonic=seconds), packet.result, packet.style)


@pytest.mark.parametrize("timed", [True, False])
def test_a_timed_video_holds_each_frame_until_the_next_ones_capture_time(
    tmp_path: Path, packet_factory, timed: bool
) -> None:
    """Behind a source that drops frames (live, realtime) the video is written at the source's fps:
    35 of 60 frames, written once each, played in 1.0 s what took 2.4 s."""
    path = tmp_path / "timed.avi"
    sink = FileSink(str(path), path, fps=10, timed=timed)
    # slots 0, 1, 5, 6 and (6.4 rounds to 6, taken: never skipped) 7; then 9.6 -> 10
    now = time.perf_counter()
    for i, t in enumerate([0.0, 0.1, 0.5, 0.6, 0.64, 0.96]):
        sink.write(_at(packet_factory(40 * i), now + t))
    stats = sink.close()
    frames = _read_all(path)
    assert stats.written == 6 and stats.errors == 0
    expected = [0, 1, 1, 1, 1, 2, 3, 4, 4, 4, 5] if timed else list(range(6))
    assert len(frames) == sink.video_frames == len(expected)
    means = [float(f.mean()) for f in frames]
    originals = [means[expected.index(k)] for k in range(6)]
    assert means == pytest.approx([originals[k] for k in expected], abs=0.5)
    assert len(set(np.round(originals))) == 6  # six different frames: the repeats are of the right one


def test_a_timed_video_far_behind_the_source_leaves_gaps_out_to_catch_up(
    tmp_path: Path, packet_factory, caplog
) -> None:
    """A sink too slow to encode fps frames a second fell further behind with every gap it filled:
    at the end its close timed out with the video unfinished."""
    path = tmp_path / "behind.avi"
    sink = FileSink(str(path), path, fps=10, timed=True)
    captured = time.perf_counter() - 10
    with caplog.at_level(logging.WARNING, logger="rtseg.sink.file"):
        for i, t in enumerate([0.0, 0.5, 1.0]):
            packet = _at(packet_factory(40 * i), captured + t)
            packet.handed = captured + t + 0.1  # the sink takes them 10 s after they were handed
            sink.write(packet)
        sink.close()
    assert len(_read_all(path)) == sink.video_frames == 3  # once each: the gaps left out
    assert caplog.text.count("too slow to fill the gaps of a 10 fps video") == 1


def test_a_timed_video_behind_a_slow_model_fills_its_gaps(tmp_path: Path, packet_factory, caplog) -> None:
    """Lag was measured from capture, which holds the inference: behind a model slower than 2 s a
    frame every gap was left out and the video played 25 times too fast, the warning blaming the
    sink."""
    path = tmp_path / "slow_model.avi"
    sink = FileSink(str(path), path, fps=10, timed=True)
    captured = time.perf_counter() - 10  # captured 10 s ago, handed to the sink just now
    with caplog.at_level(logging.WARNING, logger="rtseg.sink.file"):
        for i, t in enumerate([0.0, 0.5, 1.0]):
            sink.write(_at(packet_factory(40 * i), captured + t))
        sink.close()
    assert len(_read_all(path)) == sink.video_frames == 11  # 1 s at 10 fps: the gaps filled
    assert "too slow" not in caplog.text
