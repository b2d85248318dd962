from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg.data.datasets import camvid, cityscapes, open_dataset, read_image
from rtseg.data.labels import CAMVID
from rtseg.errors import DatasetError


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), array)


def test_camvid_layout_and_void(tmp_path: Path) -> None:
    for name in ("b", "a"):
        _write(tmp_path / "val" / f"{name}.png", np.zeros((6, 8, 3), np.uint8))
        _write(tmp_path / "valannot" / f"{name}.png", np.full((6, 8), 11, np.uint8))
    ds = camvid(tmp_path, "val")
    assert ds.names == ["a", "b"]  # file order: val is a sequence
    assert len(ds) == 2 and (ds[0].label == 255).all()


def test_camvid_missing_folder_and_label(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"CamVid folder .*test not found"):
        camvid(tmp_path, "test")
    _write(tmp_path / "test" / "x.png", np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "testannot").mkdir()
    with pytest.raises(DatasetError, match="has no label"):
        camvid(tmp_path, "test")


def test_cityscapes_official_layout_label_ids_mapped(tmp_path: Path) -> None:
    city = "aachen"
    _write(
        tmp_path / "leftImg8bit" / "val" / city / "aachen_000000_000019_leftImg8bit.png",
        np.zeros((4, 4, 3), np.uint8),
    )
    _write(
        tmp_path / "gtFine" / "val" / city / "aachen_000000_000019_gtFine_labelIds.png",
        np.full((4, 4), 26, np.uint8),
    )
    ds = cityscapes(tmp_path, "val")
    assert (ds[0].label == 13).all()
    # a value that is no labelId (0-33, 255) was scored as void without a word
    label = np.full((4, 4), 26, np.uint8)
    label[0, 0], label[1, 1] = 200, 255
    _write(tmp_path / "gtFine" / "val" / city / "aachen_000000_000019_gtFine_labelIds.png", label)
    with pytest.raises(DatasetError, match=r"holds values \[200\] that are not cityscapes label ids"):
        cityscapes(tmp_path, "val")[0]
    with pytest.raises(DatasetError, match="no gtFine labelTrainIds file"):
        cityscapes(tmp_path, "val", labels="labelTrainIds")


def test_a_camvid_folder_of_other_images_says_what_it_holds(tmp_path: Path) -> None:
    # it said only "no labelled images found", though the folder held images
    for name in ("a.jpg", "b.jpg"):
        _write(tmp_path / "test" / name, np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "testannot").mkdir()
    with pytest.raises(DatasetError, match=r"test has no \*\.png images \(it holds 2 \.jpg files\)"):
        camvid(tmp_path, "test")
    (tmp_path / "test" / "a.jpg").unlink()
    (tmp_path / "test" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match="no labelled images found for CamVid split 'test'"):
        camvid(tmp_path, "test")


def test_camvid_images_named_in_capitals_are_read(tmp_path: Path) -> None:
    for name in ("a.PNG", "b.png"):
        _write(tmp_path / "val" / name, np.zeros((2, 2, 3), np.uint8))
        _write(tmp_path / "valannot" / name, np.zeros((2, 2), np.uint8))
    assert camvid(tmp_path, "val").names == ["a", "b"]


def test_corrupt_label_is_named(tmp_path: Path) -> None:
    _write(tmp_path / "val" / "a.png", np.zeros((6, 8, 3), np.uint8))
    (tmp_path / "valannot").mkdir()
    (tmp_path / "valannot" / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match=r"cannot read label map .*valannot/a\.png"):
        camvid(tmp_path, "val")[0]


def test_unknown_dataset() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'kitti'"):
        open_dataset("kitti", ".", "val")


@pytest.mark.data
def test_cityscapes_mini_label_sources_agree(data_root: Path, tmp_path: Path) -> None:
    mini = data_root / "cityscapes_mini"
    train_ids = cityscapes(mini, "val", labels="labelTrainIds")[0].label
    label_ids = cityscapes(mini, "val", labels="labelIds")[0].label
    # The two 256x128 files were downsampled separately: they disagree on 77 of 32768 pixels, all
    # on class boundaries (the trainId is found in the mapped labelIds' 3x3 neighbourhood). The
    # mapping itself is exact everywhere else.
    differ = np.argwhere(train_ids != label_ids)
    assert len(differ) / train_ids.size < 0.005
    near = sum(train_ids[y, x] in label_ids[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] for y, x in differ)
    assert near >= 0.95 * len(differ)
    # With only the labelIds file present, "auto" falls back to it.
    for f in mini.glob("*"):
        if "labelTrainIds" not in f.name:
            shutil.copy(f, tmp_path / f.name)
    assert np.array_equal(cityscapes(tmp_path, "val")[0].label, label_ids)


@pytest.mark.data
def test_camvid_real_split_sizes(camvid_root: Path) -> None:
    assert [len(camvid(camvid_root, s)) for s in ("train", "val", "test")] == [367, 101, 233]
    sample = camvid(camvid_root, "val")[0]
    assert sample.image.shape == (360, 480, 3) and sample.label.shape == (360, 480)
    assert sample.name == "0016E5_07959"


def test_label_values_outside_the_class_ids_are_named(tmp_path: Path) -> None:
    """An id the dataset does not define is broken annotation, not void: silently ignoring it (CamVid)
    or failing in the metric without naming the file (Cityscapes train ids) misreports mIoU."""
    _write(tmp_path / "val" / "a.png", np.zeros((6, 8, 3), np.uint8))
    label = np.full((6, 8), 3, np.uint8)
    label[0, :3] = (11, 255, 40)  # void and ignore are fine; 40 is no CamVid id
    _write(tmp_path / "valannot" / "a.png", label)
    with pytest.raises(DatasetError, match=r"valannot/a\.png holds values \[40\] .*expected 0\.\.11 or 255"):
        camvid(tmp_path, "val")[0]
    label[0, 2] = 10
    _write(tmp_path / "valannot" / "a.png", label)
    assert camvid(tmp_path, "val")[0].label[0, :3].tolist() == [255, 255, 10]

    stem = tmp_path / "city" / "x"
    _write(Path(f"{stem}_leftImg8bit.png"), np.zeros((6, 8, 3), np.uint8))
    _write(Path(f"{stem}_gtFine_labelTrainIds.png"), np.array([[0, 18, 255, 19, 30]], np.uint8).repeat(6, 0))
    with pytest.raises(
        DatasetError, match=r"x_gtFine_labelTrainIds\.png holds values \[19, 30\] .*0\.\.18 or 255"
    ):
        cityscapes(tmp_path / "city", "val")[0]


def test_palette_png_labels_are_read_as_class_ids(tmp_path: Path) -> None:
    """An index PNG with a palette attached (VOC style, as many annotation tools write them) holds
    class ids; OpenCV expands it to colours, which used to be refused as a 3-channel label."""
    from PIL import Image

    _write(tmp_path / "val" / "a.png", np.zeros((6, 8, 3), np.uint8))
    ids = np.zeros((6, 8), np.uint8)
    ids[3:] = 3
    ids[0] = 11
    image = Image.fromarray(ids, "P")
    image.putpalette([v for i in range(256) for v in CAMVID.palette[i % 11]])  # ids beyond 11 unused
    (tmp_path / "valannot").mkdir()
    image.save(tmp_path / "valannot" / "a.png")
    label = camvid(tmp_path, "val")[0].label
    assert label[0].tolist() == [255] * 8 and (label[1:3] == 0).all() and (label[3:] == 3).all()
    _write(tmp_path / "valannot" / "a.png", np.zeros((6, 8, 3), np.uint8))  # a colour-coded label
    with pytest.raises(DatasetError, match="must be a single-channel 8-bit PNG"):
        camvid(tmp_path, "val")[0]


def test_camvid_frames_are_ordered_with_numbers_by_value(tmp_path: Path) -> None:
    """Sorted as text, frame_10 came before frame_2: --sequence and the sweep played a scrambled
    video, in another order than ``images://`` plays the same folder."""
    from rtseg.source.images import list_images

    for i in (10, 2, 1, 11):
        _write(tmp_path / "seq" / f"frame_{i}.png", np.full((4, 6, 3), i, np.uint8))
        _write(tmp_path / "seqannot" / f"frame_{i}.png", np.zeros((4, 6), np.uint8))
    ds = camvid(tmp_path, "seq")
    assert ds.names == ["frame_1", "frame_2", "frame_10", "frame_11"]
    assert [int(s.image[0, 0, 0]) for s in ds] == [1, 2, 10, 11]
    assert ds.names == [p.stem for p in list_images(str(tmp_path / "seq"))]


def test_cityscapes_frames_are_ordered_with_numbers_by_value(tmp_path: Path) -> None:
    for layout, folder in (("flat", tmp_path / "flat"), ("official", tmp_path / "official")):
        for i in (10, 9, 100):
            stem = f"city_{i}_19"
            image_dir = folder / "leftImg8bit" / "val" / "city" if layout == "official" else folder
            label_dir = folder / "gtFine" / "val" / "city" if layout == "official" else folder
            _write(image_dir / f"{stem}_leftImg8bit.png", np.zeros((4, 6, 3), np.uint8))
            _write(label_dir / f"{stem}_gtFine_labelTrainIds.png", np.zeros((4, 6), np.uint8))
        assert cityscapes(folder, "val").names == ["city_9_19", "city_10_19", "city_100_19"], layout


def test_a_truncated_training_jpeg_is_refused(tmp_path: Path) -> None:
    """A cut JPEG was read with its missing rows grey, and trained on."""
    cv2.imwrite(
        str(tmp_path / "a.jpg"), np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    )
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(data[:-40])
    with pytest.raises(DatasetError, match=r"a\.jpg: the JPEG is truncated"):
        read_image(tmp_path / "a.jpg")
