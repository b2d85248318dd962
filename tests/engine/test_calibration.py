"""INT8 calibration data: the list file, frames from images and videos, per-stage feeds, batches,
and the TensorRT entropy calibrator's batching and cache I/O (no TensorRT or GPU needed: the
device upload is injected; only ``cuda_upload`` itself needs CUDA)."""

from __future__ import annotations

import errno
import gc
import logging
import os
import re
import shutil
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rtseg.engine import TorchEngine
from rtseg.engine import calibration as calibration_mod
from rtseg.engine.cache import CacheUnwritableError
from rtseg.engine.calibration import (
    LIST_HEADER,
    CalibrationList,
    EntropyCalibrator,
    batches,
    cuda_upload,
    default_calibration_dir,
    stage_feeds,
)
from rtseg.errors import ConfigError, DatasetError
from rtseg.models import StagedSegmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (64, 48)


def _write_images(folder: Path, count: int, size: tuple[int, int] = (80, 60)) -> list[Path]:
    """``count`` PNGs whose brightness is 10 * their index (so a decoded frame names its file)."""
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    paths = []
    for i in range(count):
        path = folder / f"f{i:02d}.png"
        cv2.imwrite(str(path), np.full((h, w, 3), 10 * i, np.uint8))
        paths.append(path)
    return paths


def _write_video(path: Path, count: int, size: tuple[int, int] = (64, 48)) -> Path:
    """An MJPG video whose frame i has brightness 20 * i (lossy: decoded within a few levels)."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG .avi files")
    for i in range(count):
        writer.write(np.full((h, w, 3), 20 * i, np.uint8))
    writer.release()
    return path


# --- the list ---------------------------------------------------------------------------------


def test_from_images_spreads_evenly_and_recurses(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    _write_images(folder, 6)
    _write_images(folder / "sub", 2)  # f00.png, f01.png in a subfolder: found, sorted after
    (folder / "notes.txt").write_text("not an image")
    (folder / "zz.png").mkdir()  # a folder named like an image is not one
    calib = CalibrationList.from_images(folder, 4)
    assert calib.kind == "images" and calib.source == folder.resolve() and len(calib) == 4
    # 8 files sorted: f00..f05, sub/f00, sub/f01 -> indices 0, 2, 4, 6
    assert calib.entries == ("f00.png", "f02.png", "f04.png", "sub/f00.png")
    assert CalibrationList.from_images(folder, 8).entries[-1] == "sub/f01.png"


def test_frames_are_resized_to_the_engine_input_in_list_order(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", 5)
    calib = CalibrationList.from_images(tmp_path / "imgs", 5)
    frames = list(calib.frames(SIZE))
    assert len(frames) == 5
    for i, frame in enumerate(frames):
        assert frame.shape == (SIZE[1], SIZE[0], 3) and frame.dtype == np.uint8
        assert int(frame.mean()) == 10 * i
    # a frame already at the input size is used as decoded
    same = CalibrationList.from_images(tmp_path / "imgs", 1)
    assert next(same.frames((80, 60))).shape == (60, 80, 3)


def test_from_images_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        CalibrationList.from_images(tmp_path / "missing", 4)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"no images \(.png"):
        CalibrationList.from_images(tmp_path / "empty", 4)
    _write_images(tmp_path / "three", 3)
    with pytest.raises(ConfigError, match="asked for 4 calibration frames but the source has only 3"):
        CalibrationList.from_images(tmp_path / "three", 4)
    with pytest.raises(ConfigError, match="must be positive, got 0"):
        CalibrationList.from_images(tmp_path / "three", 0)


def test_a_deleted_image_is_named_when_frames_are_read(tmp_path: Path) -> None:
    paths = _write_images(tmp_path / "imgs", 3)
    calib = CalibrationList.from_images(tmp_path / "imgs", 3)
    paths[1].unlink()
    with pytest.raises(DatasetError, match=r"f01\.png is missing or unreadable"):
        list(calib.frames(SIZE))


def test_from_video_takes_evenly_spaced_frame_indices(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "clip.avi", 12)
    calib = CalibrationList.from_video(video, 4)
    assert calib.kind == "video" and calib.source == video.resolve()
    assert calib.entries == ("0", "3", "6", "9")
    frames = list(calib.frames(SIZE))
    assert [round(float(f.mean()) / 20) for f in frames] == [0, 3, 6, 9]
    assert all(f.shape == (SIZE[1], SIZE[0], 3) for f in frames)
    with pytest.raises(ConfigError, match="only 12"):
        CalibrationList.from_video(video, 13)


def test_a_hand_edited_video_list_is_decoded_front_to_back(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "clip.avi", 8)
    calib = CalibrationList("video", video.resolve(), ("6", "1", "3", "3"))
    assert [round(float(f.mean()) / 20) for f in calib.frames(SIZE)] == [1, 3, 3, 6]


def test_video_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot open calibration video"):
        CalibrationList.from_video(tmp_path / "missing.avi", 2)
    video = _write_video(tmp_path / "short.avi", 4)
    beyond = CalibrationList("video", video.resolve(), ("1", "7"))
    with pytest.raises(DatasetError, match="ended at frame 4; the list wants 7"):
        list(beyond.frames(SIZE))


def test_a_name_that_is_not_utf8_is_refused_before_opencv_sees_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cv2.VideoCapture and cv2.imread crashed the process (SIGSEGV) on such a name."""
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    folder.mkdir()
    _, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    (folder / "a.png").write_bytes(png.tobytes())

    def no_opencv(*args: object) -> None:
        raise AssertionError(f"OpenCV was called with {args}")

    monkeypatch.setattr(cv2, "VideoCapture", no_opencv)
    monkeypatch.setattr(cv2, "imread", no_opencv)
    named = r"caf\\xe9.*: the name 'caf\\xe9' is not valid UTF-8"
    with pytest.raises(DatasetError, match=named):
        CalibrationList.from_video(folder / "clip.avi", 2)
    with pytest.raises(DatasetError, match=named):  # when the list is made, not when a build reads it
        CalibrationList.from_images(folder, 1)
    with pytest.raises(DatasetError, match=named):
        CalibrationList("video", folder / "clip.avi", ("0",))


def test_save_writes_the_source_relative_and_load_resolves_it(tmp_path: Path) -> None:
    _write_images(tmp_path / "data" / "imgs", 4)
    calib = CalibrationList.from_images(tmp_path / "data" / "imgs", 2)
    list_path = calib.save(tmp_path / "lists" / "espnet.txt")
    lines = list_path.read_text().splitlines()
    assert lines == [
        LIST_HEADER,
        "# images: ../data/imgs",
        f"# id: {calib.id} entries {calib.names_digest}",
        "f00.png",
        "f02.png",
    ]
    loaded = CalibrationList.load(list_path)
    assert loaded == calib and loaded.id == calib.id
    assert [f.mean() for f in loaded.frames(SIZE)] == [f.mean() for f in calib.frames(SIZE)]


def test_a_moved_tree_still_loads_and_keeps_its_id(tmp_path: Path) -> None:
    """A list committed next to its data works wherever the checkout is, with the same id (so
    the same int8 artifact names)."""
    _write_images(tmp_path / "a" / "imgs", 4)
    calib = CalibrationList.from_images(tmp_path / "a" / "imgs", 4)
    calib.save(tmp_path / "a" / "calibration" / "list.txt")
    original_id = calib.id  # the id hashes the images: taken while they are still there
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    shutil.rmtree(tmp_path / "a")
    moved = CalibrationList.load(tmp_path / "elsewhere" / "b" / "calibration" / "list.txt")
    assert moved.source == (tmp_path / "elsewhere" / "b" / "imgs").resolve()
    assert moved.id == original_id and moved.entries == calib.entries
    assert len(list(moved.frames(SIZE))) == 4


def test_id_follows_the_content(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", 6)
    a = CalibrationList.from_images(tmp_path / "imgs", 3)
    assert len(a.id) == 8 and all(c in "0123456789abcdef" for c in a.id)
    assert CalibrationList.from_images(tmp_path / "imgs", 3).id == a.id
    assert CalibrationList.from_images(tmp_path / "imgs", 2).id != a.id
    shutil.copytree(tmp_path / "imgs", tmp_path / "other")  # the same pixels, another folder name
    assert CalibrationList("images", tmp_path / "other", a.entries).id != a.id
    video = _write_video(tmp_path / "clip.avi", 6)
    v = CalibrationList("video", video, ("0", "2", "4"))
    assert len(v.id) == 8 and v.id != a.id
    assert CalibrationList("video", video, ("0", "2", "5")).id != v.id


def test_an_image_replaced_under_the_same_name_changes_the_id(tmp_path: Path) -> None:
    """The id names the int8 artifacts and TensorRT's calibration cache: a list whose image was
    replaced by another picture of the same name must not reuse what the old picture calibrated."""
    paths = _write_images(tmp_path / "imgs", 3)
    before = CalibrationList.from_images(tmp_path / "imgs", 3).id
    cv2.imwrite(str(paths[1]), np.full((60, 80, 3), 200, np.uint8))
    after = CalibrationList.from_images(tmp_path / "imgs", 3)
    assert after.entries == ("f00.png", "f01.png", "f02.png") and after.id != before
    cv2.imwrite(str(paths[1]), np.full((60, 80, 3), 10, np.uint8))  # the original pixels back
    assert CalibrationList.from_images(tmp_path / "imgs", 3).id == before


def test_a_replaced_video_changes_the_id(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "clip.avi", 6)
    before = CalibrationList("video", video, ("0", "3")).id
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(6):
        writer.write(np.full((48, 64, 3), 255 - 20 * i, np.uint8))
    writer.release()
    assert CalibrationList("video", video, ("0", "3")).id != before


def test_the_id_of_a_list_whose_file_is_gone_names_it(tmp_path: Path) -> None:
    paths = _write_images(tmp_path / "imgs", 3)
    calib = CalibrationList.from_images(tmp_path / "imgs", 3)
    paths[2].unlink()
    with pytest.raises(DatasetError, match=r"cannot read calibration image .*f02\.png to identify the list"):
        _ = calib.id
    with pytest.raises(DatasetError, match=r"cannot read calibration video .*missing\.avi"):
        _ = CalibrationList("video", tmp_path / "missing.avi", ("0",)).id


def test_a_committed_list_without_its_images_keeps_the_id_it_recorded(tmp_path: Path) -> None:
    # Lists are committed and images are not: the id hashes the images, so a checkout without
    # them could not name, so not find, the int8 builds it had already made.
    paths = _write_images(tmp_path / "imgs", 3)
    calib = CalibrationList.from_images(tmp_path / "imgs", 3)
    list_path = calib.save(tmp_path / "list.txt")
    shutil.rmtree(tmp_path / "imgs")
    loaded = CalibrationList.load(list_path)
    assert loaded.recorded_id == calib.id and loaded.id == calib.id
    with pytest.raises(DatasetError, match=r"calibration image .*f00\.png is missing or unreadable"):
        list(loaded.frames(SIZE))  # a rebuild still needs them, and says which is missing
    # Entries edited since the id was recorded: that id named other frames' builds.
    edited = list_path.read_text().replace("f02.png", "f01.png")
    (tmp_path / "edited.txt").write_text(edited)
    with pytest.raises(DatasetError, match=r"cannot read calibration image") as info:
        _ = CalibrationList.load(tmp_path / "edited.txt").id
    assert any("entries changed since it recorded its id" in note for note in info.value.__notes__)
    # A list from before ids were recorded: the old error, naming the image.
    list_path.write_text("\n".join(ln for ln in list_path.read_text().splitlines() if "# id:" not in ln))
    with pytest.raises(DatasetError, match=r"cannot read calibration image .*to identify the list"):
        _ = CalibrationList.load(list_path).id
    _write_images(tmp_path / "imgs", 3)  # present again, the files decide (a changed image: a new id)
    cv2.imwrite(str(paths[0]), np.full((60, 80, 3), 99, np.uint8))
    assert CalibrationList.load(calib.save(tmp_path / "list.txt")).id != calib.id


def test_an_edited_list_without_its_images_says_so_on_python_3_10(tmp_path: Path, python310) -> None:
    """exc.add_note() does not exist before 3.11: the edited list's missing image surfaced as an
    AttributeError instead of this DatasetError."""
    python310(DatasetError)
    _write_images(tmp_path / "imgs", 3)
    list_path = CalibrationList.from_images(tmp_path / "imgs", 3).save(tmp_path / "list.txt")
    shutil.rmtree(tmp_path / "imgs")
    list_path.write_text(list_path.read_text().replace("f02.png", "f01.png"))
    with pytest.raises(DatasetError, match=r"cannot read calibration image") as info:
        _ = CalibrationList.load(list_path).id
    assert any("entries changed since it recorded its id" in note for note in info.value.__notes__)


def test_an_absolute_source_line_still_loads(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", 2)
    path = tmp_path / "lists" / "old.txt"
    path.parent.mkdir()
    path.write_text(f"{LIST_HEADER}\n# images: {(tmp_path / 'imgs').resolve()}\nf01.png\n")
    loaded = CalibrationList.load(path)
    assert loaded.source == (tmp_path / "imgs").resolve() and loaded.entries == ("f01.png",)
    assert int(next(loaded.frames(SIZE)).mean()) == 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not an rtseg calibration list"),
        ("# some other list\n# images: x\na.png\n", "is not an rtseg calibration list"),
        (f"{LIST_HEADER}\na.png\n", "missing the '# images: DIR' or '# video: FILE' source line"),
        (f"{LIST_HEADER}\n# pictures: x\na.png\n", "missing the '# images: DIR'"),
        (f"{LIST_HEADER}\n# images: x\n\n# just a comment\n", "lists no frames"),
    ],
)
def test_load_rejects_malformed_lists(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        CalibrationList.load(path)


@pytest.mark.parametrize("entry", ["abc", "1.5", "-5", "+3", "1e3"])
def test_a_video_entry_that_is_not_a_frame_number_is_refused_at_load_naming_the_line(
    tmp_path: Path, entry: str
) -> None:
    """Found while decoding, it surfaced as "no calibration data" naming neither list nor line."""
    video = _write_video(tmp_path / "clip.avi", 4)
    path = tmp_path / "l.txt"
    path.write_text(f"{LIST_HEADER}\n# video: {video.name}\n0\n{entry}\n")
    with pytest.raises(ConfigError, match=rf"l\.txt line 4: '{re.escape(entry)}' is not a frame number"):
        CalibrationList.load(path)
    with pytest.raises(ConfigError, match="is not a frame number"):
        CalibrationList("video", video.resolve(), ("0", entry))


def test_image_entries_need_not_be_numbers(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", 1)
    path = tmp_path / "l.txt"
    path.write_text(f"{LIST_HEADER}\n# images: imgs\nf00.png\n")
    assert CalibrationList.load(path).entries == ("f00.png",)


def test_load_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read calibration list"):
        CalibrationList.load(tmp_path / "nope.txt")


def test_list_validates_its_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind must be 'images' or 'video'"):
        CalibrationList("frames", tmp_path, ("a.png",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="entries must not be empty"):
        CalibrationList("images", tmp_path, ())


def test_default_dir_env_then_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RTSEG_CALIBRATION_DIR", str(tmp_path / "c"))
    assert default_calibration_dir() == tmp_path / "c"
    monkeypatch.delenv("RTSEG_CALIBRATION_DIR")
    monkeypatch.setattr(calibration_mod, "_PACKAGE_DIR", tmp_path / "site-packages" / "rtseg")
    assert default_calibration_dir() == Path.home() / ".cache" / "rtseg" / "calibration"
    (tmp_path / "site-packages" / "calibration").mkdir(parents=True)
    (tmp_path / "site-packages" / "calibration" / "README.md").write_text("marker")
    assert default_calibration_dir() == tmp_path / "site-packages" / "calibration"


def test_no_home_directory_asks_for_the_calibration_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("RTSEG_CALIBRATION_DIR", raising=False)
    monkeypatch.setattr(calibration_mod, "_PACKAGE_DIR", tmp_path / "site-packages" / "rtseg")
    monkeypatch.setattr(Path, "home", no_home)
    with pytest.raises(ConfigError, match=r"~/.cache/rtseg/calibration: .*; set RTSEG_CALIBRATION_DIR to a"):
        default_calibration_dir()


# --- feeds and batches ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(make_model: Callable[..., StagedSegmenter]) -> TorchEngine:
    return TorchEngine(make_model("espnet", SIZE), input_size=SIZE)


def _frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8) for _ in range(count)]


def test_stage_feeds_are_the_reference_activations(reference: TorchEngine) -> None:
    frames = _frames(2)
    spec = reference.stage_spec
    low = list(stage_feeds(reference, frames, "low", ("image",)))
    assert len(low) == 2 and set(low[0]) == {"image"}
    assert low[0]["image"].shape == (1, SIZE[1], SIZE[0], 3) and np.array_equal(low[0]["image"][0], frames[0])

    deep_inputs = tuple(spec.deep_inputs)
    deep = list(stage_feeds(reference, frames, "deep", deep_inputs))
    head_inputs = (*reference.head_low_inputs, *(f.name for f in spec.deep))
    head = list(stage_feeds(reference, frames, "head", head_inputs))
    for i, frame in enumerate(frames):
        ref_low = reference.run_low(frame)
        ref_deep = reference.run_deep(ref_low)
        assert tuple(deep[i]) == deep_inputs and tuple(head[i]) == head_inputs
        for name, value in deep[i].items():
            assert isinstance(value, np.ndarray) and value.shape[0] == 1
            np.testing.assert_array_equal(value, ref_low[name].numpy())
        for name, value in head[i].items():
            expected = ref_low[name] if name in ref_low else ref_deep[name]
            np.testing.assert_array_equal(value, expected.numpy())
    # the frames differ, so the feeds do too
    assert not np.array_equal(deep[0][deep_inputs[0]], deep[1][deep_inputs[0]])


def test_batches_stack_in_order_and_drop_a_partial_batch(caplog: pytest.LogCaptureFixture) -> None:
    feeds = [{"a": np.full((1, 2), i, np.float32), "b": np.full((1, 3, 1), -i, np.int64)} for i in range(5)]
    with caplog.at_level(logging.INFO, logger="rtseg.engine.calibration"):
        out = list(batches(iter(feeds), 2))
    assert len(out) == 2
    for k, batch in enumerate(out):
        assert set(batch) == {"a", "b"}
        assert batch["a"].shape == (2, 2) and batch["b"].shape == (2, 3, 1)
        assert batch["a"].flags.c_contiguous and batch["a"].dtype == np.float32
        assert batch["a"][:, 0].tolist() == [2 * k, 2 * k + 1]
        assert batch["b"][:, 0, 0].tolist() == [-2 * k, -2 * k - 1]
    assert "dropped a last partial batch of 1 (batch size 2)" in caplog.text
    assert len(list(batches(iter(feeds), 1))) == 5
    assert list(batches(iter(feeds), 6)) == []
    with pytest.raises(ConfigError, match="batch_size must be positive"):
        list(batches(iter(feeds), 0))


# --- the entropy calibrator -------------------------------------------------------------------


class HostUpload:
    """Stands in for the CUDA copy: keeps each uploaded batch on the host, returns its address."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []

    def __call__(self, array: np.ndarray) -> tuple[int, np.ndarray]:
        copy = array.copy()
        self.arrays.append(copy)
        return int(copy.ctypes.data), copy


def _feeds(count: int) -> list[dict[str, np.ndarray]]:
    return [
        {"x": np.full((1, 4, 2, 2), i, np.float32), "y": np.full((1, 8, 1, 1), 100 + i, np.float32)}
        for i in range(count)
    ]


def test_calibrator_serves_batches_in_name_order_then_none(tmp_path: Path) -> None:
    upload = HostUpload()
    calls = []

    def feeds() -> Iterator[dict[str, np.ndarray]]:
        calls.append(1)
        return iter(_feeds(5))

    calibrator = EntropyCalibrator(feeds, cache_path=tmp_path / "c.calib", batch_size=2, upload=upload)
    assert calibrator.get_batch_size() == 2
    assert calls == []  # the data is produced only when TensorRT asks for it
    first = calibrator.get_batch(["y", "x"])
    assert first == [int(upload.arrays[0].ctypes.data), int(upload.arrays[1].ctypes.data)]
    assert upload.arrays[0][:, 0, 0, 0].tolist() == [100, 101]  # "y" first, as asked
    assert upload.arrays[1].shape == (2, 4, 2, 2) and upload.arrays[1][:, 0, 0, 0].tolist() == [0, 1]
    second = calibrator.get_batch(["y", "x"])
    assert second is not None and upload.arrays[3][:, 0, 0, 0].tolist() == [2, 3]
    assert calibrator.get_batch(["y", "x"]) is None  # 5 feeds: the fifth does not fill a batch
    assert calibrator.get_batch(["y", "x"]) is None
    assert calibrator.batches_served == 2 and calls == [1]


def test_calibrator_keeps_a_batch_alive_until_the_next_one(tmp_path: Path) -> None:
    """TensorRT reads the device memory after get_batch returns: the upload's handle must live
    until the next call."""
    refs: list[weakref.ref] = []

    class Handle:
        pass

    def upload(array: np.ndarray) -> tuple[int, Handle]:
        handle = Handle()
        refs.append(weakref.ref(handle))
        return len(refs), handle

    calibrator = EntropyCalibrator(lambda: iter(_feeds(4)), cache_path=tmp_path / "c", upload=upload)
    assert calibrator.get_batch(["x"]) == [1]
    gc.collect()
    assert refs[0]() is not None
    calibrator.get_batch(["x"])
    gc.collect()
    assert refs[0]() is None and refs[1]() is not None


def test_calibrator_names_missing_inputs(tmp_path: Path) -> None:
    calibrator = EntropyCalibrator(lambda: iter(_feeds(2)), cache_path=tmp_path / "c", upload=HostUpload())
    with pytest.raises(ConfigError, match=r"lacks inputs \['z'\]; it has \['x', 'y'\]"):
        calibrator.get_batch(["x", "z"])


def test_calibrator_batch_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size must be positive, got 0"):
        EntropyCalibrator(lambda: iter(()), cache_path=tmp_path / "c", batch_size=0)


def test_calibration_cache_round_trip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache" / "nested" / "espnet.low.calib"
    calibrator = EntropyCalibrator(lambda: iter(()), cache_path=path, upload=HostUpload())
    assert calibrator.read_calibration_cache() is None  # nothing yet: TensorRT calibrates
    payload = b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n"
    with caplog.at_level(logging.INFO, logger="rtseg.engine.calibration"):
        calibrator.write_calibration_cache(memoryview(payload))  # TensorRT hands over a buffer
    assert path.read_bytes() == payload
    assert not list(path.parent.glob("*.tmp"))
    again = EntropyCalibrator(lambda: iter(()), cache_path=path, upload=HostUpload())
    assert again.read_calibration_cache() == payload
    assert "wrote TensorRT calibration cache" in caplog.text
    path.write_bytes(b"")  # an empty file (an interrupted writer elsewhere) is not a cache
    assert again.read_calibration_cache() is None


@pytest.mark.parametrize(
    "error",
    [PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EIO, "Input/output error")],
    ids=["permission", "io-error"],
)
def test_an_unreadable_calibration_cache_means_calibrating_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, error: OSError
) -> None:
    """A cache file that cannot be read failed the build with a bare OSError from inside
    TensorRT; the cache only saves time, and writing the new one replaces the file."""
    path = tmp_path / "espnet.low.calib"
    path.write_bytes(b"TRT-8601-EntropyCalibration2\n")
    real_read = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == path:
            raise error
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)  # root ignores chmod, so fake the error
    calibrator = EntropyCalibrator(lambda: iter(()), cache_path=path, upload=HostUpload())
    with caplog.at_level(logging.WARNING, logger="rtseg.engine.calibration"):
        assert calibrator.read_calibration_cache() is None
    assert (
        f"cannot read TensorRT calibration cache {path} ({error.strerror}); calibrating again" in caplog.text
    )


def test_a_folder_in_place_of_the_calibration_cache_fails_before_calibrating(tmp_path: Path) -> None:
    """The new cache could never be written over a folder: calibrating (minutes) and then failing
    to save it wasted the work, so the read already says which path to clear."""
    path = tmp_path / "espnet.low.calib"
    path.mkdir()
    calibrator = EntropyCalibrator(lambda: iter(_feeds(1)), cache_path=path, upload=HostUpload())
    with pytest.raises(
        CacheUnwritableError,
        match=rf"calibration cache {re.escape(str(path))}: a folder is in its place; remove it",
    ):
        calibrator.read_calibration_cache()
    assert calibrator.batches_served == 0


def test_calibrator_over_real_stage_feeds(tmp_path: Path, reference: TorchEngine) -> None:
    """List -> frames -> the deep stage's reference inputs -> batches of 2 -> uploads."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, frame in enumerate(_frames(5, seed=3)):
        cv2.imwrite(str(folder / f"{i}.png"), frame)
    calib = CalibrationList.from_images(folder, 5)
    inputs = tuple(reference.stage_spec.deep_inputs)
    upload = HostUpload()
    calibrator = EntropyCalibrator(
        lambda: stage_feeds(reference, calib.frames(SIZE), "deep", inputs),
        cache_path=tmp_path / "deep.calib",
        batch_size=2,
        upload=upload,
    )
    served = 0
    while calibrator.get_batch(list(inputs)) is not None:
        served += 1
    assert served == 2 and len(upload.arrays) == 2 * len(inputs)
    first = next(calib.frames(SIZE))
    expected = reference.run_low(first)[inputs[0]].numpy()
    assert upload.arrays[0].shape == (2, *expected.shape[1:])
    np.testing.assert_array_equal(upload.arrays[0][:1], expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuda_upload copies to a CUDA device; none here")
def test_cuda_upload_returns_the_device_address() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    address, handle = cuda_upload(array)
    assert handle.is_cuda and address == handle.data_ptr()
    np.testing.assert_array_equal(handle.cpu().numpy(), array)


def test_an_unwritable_calibration_cache_is_a_typed_error_naming_it(tmp_path: Path) -> None:
    """TensorRT hands the calibration cache to write_calibration_cache; a folder that cannot be
    written (read-only, a file in the way) is a typed error naming the file and the fix, which
    the TensorRT wrapper re-raises after the build, not a bare OSError."""
    from rtseg.engine.cache import CacheUnwritableError

    blocker = tmp_path / "file"
    blocker.write_text("")
    path = blocker / "cache" / "x.low.calib"  # a folder under a file cannot exist (even for root)
    calibrator = EntropyCalibrator(lambda: iter(()), cache_path=path, upload=lambda a: (1, a))
    with pytest.raises(CacheUnwritableError) as info:
        calibrator.write_calibration_cache(b"scales")
    message = str(info.value)
    assert f"cannot write the calibration cache {path}" in message and "RTSEG_CALIBRATION_DIR" in message
    assert isinstance(info.value, ConfigError)


def test_a_truncated_calibration_jpeg_is_refused(tmp_path: Path) -> None:
    """It was calibrated on with its missing rows grey, skewing the INT8 ranges without a word."""
    folder = tmp_path / "jpegs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        cv2.imwrite(str(folder / f"f{i}.jpg"), rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    calib = CalibrationList.from_images(folder, 2)
    data = (folder / "f1.jpg").read_bytes()
    (folder / "f1.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"f1\.jpg is missing or unreadable: the JPEG is truncated"):
        list(calib.frames(SIZE))
