from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg.errors import SourceError
from rtseg.source import open_source


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "frames"
    d.mkdir()
    for i in (2, 0, 1, 10):  # written out of order: the source sorts by name
        image = np.full((24, 32, 3), i * 20, np.uint8)
        cv2.imwrite(str(d / f"f{i:03d}.png"), image)
    (d / "notes.txt").write_text("not an image")
    return d


def test_folder_in_name_order(folder: Path) -> None:
    with open_source(folder) as src:
        assert src.info.kind == "images" and src.info.frame_count == 4 and src.info.size == (32, 24)
        values = [int(f.image[0, 0, 0]) for f in src]
    assert values == [0, 20, 40, 200]


@pytest.mark.parametrize("pattern", ["", "/*.png"], ids=["folder", "glob"])
def test_unpadded_numbers_play_in_order_and_hidden_files_are_left_out(tmp_path: Path, pattern: str) -> None:
    """frame_10 sorted before frame_2 by plain string order; a Mac's '._frame_1.png' beside each
    frame (no image) stopped a folder source, which a glob of the same folder skipped."""
    d = tmp_path / "frames"
    d.mkdir()
    for i in (1, 2, 10, 11):
        cv2.imwrite(str(d / f"frame_{i}.png"), np.full((8, 8, 3), i, np.uint8))
    (d / "._frame_1.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    with open_source(f"{d}{pattern}") as src:
        assert [int(f.image[0, 0, 0]) for f in src] == [1, 2, 10, 11]


def test_images_scheme_and_glob(folder: Path) -> None:
    with open_source(f"images://{folder}/f00*.png") as src:
        assert [int(f.image[0, 0, 0]) for f in src] == [0, 20, 40]
    with open_source(str(folder / "f01*.png")) as src:
        assert [int(f.image[0, 0, 0]) for f in src] == [200]


def test_single_image_is_one_frame_and_loops(folder: Path) -> None:
    path = folder / "f001.png"
    with open_source(path) as src:
        assert len(list(src)) == 1
    with open_source(path, loop=True) as src:
        frames = [f for _, f in zip(range(5), src, strict=False)]
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert not any(f.discontinuity for f in frames)  # a still image repeats itself: no jump
    assert frames[0].image is not frames[1].image  # every frame is the consumer's own array
    frames[0].image[:] = 0
    assert int(frames[1].image[0, 0, 0]) == 20


def test_folder_loops(folder: Path) -> None:
    with open_source(folder, loop=True) as src:
        frames = [f for _, f in zip(range(9), src, strict=False)]
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 20, 40, 200] * 2 + [0]


def test_empty_folder_and_bad_glob(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no image files"):
        open_source(tmp_path)
    with pytest.raises(SourceError, match="no image files match"):
        open_source(f"images://{tmp_path}/*.png")
    with pytest.raises(SourceError, match="not found"):
        open_source(f"images://{tmp_path}/missing")


def test_unreadable_image_names_the_file(folder: Path) -> None:
    (folder / "f005.png").write_bytes(b"\x89PNG broken")
    with open_source(folder) as src, pytest.raises(SourceError, match=r"f005\.png"):
        list(src)


def test_an_image_removed_during_the_run_is_named_as_missing(folder: Path) -> None:
    # it was "cannot read image ... (truncated or not an image)"
    with open_source(folder) as src:
        first = next(iter(src))
        (folder / "f002.png").unlink()
        with pytest.raises(
            SourceError, match=r"image file not found: .*f002\.png \(removed during the run\)"
        ):
            list(src)
    assert int(first.image[0, 0, 0]) == 0


@pytest.mark.data
def test_camvid_val_is_read_in_file_order(camvid_root: Path) -> None:
    with open_source(camvid_root / "val") as src:
        frames = list(src)
    assert len(frames) == 101 and frames[0].size == (480, 360)


def test_a_jpeg_cut_short_stops_the_source_and_names_it(tmp_path: Path) -> None:
    """It was decoded with its missing rows flat grey and segmented as a frame; a cut PNG was
    already refused."""
    rng = np.random.default_rng(1)
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f{i}.jpg"), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    data = (tmp_path / "f1.jpg").read_bytes()
    (tmp_path / "f1.jpg").write_bytes(data[: len(data) // 2])
    with open_source(tmp_path) as src:
        frames = iter(src)
        first = next(frames)
        with pytest.raises(SourceError, match=r"cannot read image .*f1\.jpg: the JPEG is truncated"):
            next(frames)
    assert first.index == 0
