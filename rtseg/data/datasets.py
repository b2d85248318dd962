"""Labelled datasets on disk (CamVid as released with SegNet, Cityscapes' official layout).

Both yield ``Sample``: a BGR uint8 image and a uint8 train-id label map with 255 = ignore, in a
stable file order, numbers by value as ``images://`` plays a folder (frame_2 before frame_10):
CamVid val is one continuous sequence, and order matters for scheduling studies.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from ..errors import DatasetError
from ..image_file import UnreadableImage, read_bgr
from ..source.images import frame_order
from .labels import CAMVID, CAMVID_LABEL_IDS, CITYSCAPES, CITYSCAPES_LABEL_IDS, ClassSet, LabelIdMap


@dataclass(frozen=True)
class Sample:
    name: str
    image: np.ndarray  # HxWx3 uint8 BGR
    label: np.ndarray  # HxW uint8 train ids, 255 = ignore


@dataclass(frozen=True)
class _Pair:
    name: str
    image_path: Path
    label_path: Path
    label_map: LabelIdMap | None  # None: already train ids


def read_image(path: Path) -> np.ndarray:
    try:
        return read_bgr(path)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except UnreadableImage as error:
        raise DatasetError(f"cannot read image {path}: {error}") from None


def _is_palette_png(path: Path) -> bool:
    """PNG colour type 3: the pixels are indices (class ids) into a palette."""
    with open(path, "rb") as f:
        head = f.read(26)
    return head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[25:26] == b"\x03"


def read_label(path: Path) -> np.ndarray:
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DatasetError(f"cannot read label map {path} (missing, truncated or not an image)")
    if label.ndim == 3 and _is_palette_png(path):
        # OpenCV expands a palette to colours; the class ids are the indices, which Pillow keeps.
        from PIL import Image

        with Image.open(path) as image:
            label = np.asarray(image)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise DatasetError(
            f"label map {path} must be a single-channel 8-bit PNG, "
            f"got shape {label.shape} dtype {label.dtype}"
        )
    return label


def _spans(ids: tuple[int, ...]) -> str:
    """(0, 1, 2, 255) -> '0..2 or 255'."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    parts = [f"{a}..{b}" if b > a else str(a) for a, b in runs]
    return " or ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)


class SegmentationDataset(Sequence[Sample]):
    """A list of (image, label) file pairs read lazily, optionally cached decoded in memory."""

    classes: ClassSet

    def __init__(self, pairs: list[_Pair], classes: ClassSet, description: str) -> None:
        if not pairs:
            raise DatasetError(f"no labelled images found for {description}")
        self._pairs = pairs
        self.classes = classes
        self.description = description
        self._cache: dict[int, Sample] | None = None

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        pair = self._pairs[index]
        image = read_image(pair.image_path)
        label = read_label(pair.label_path)
        if pair.label_map is None:
            self._check_ids(label, (*range(len(self.classes)), self.classes.ignore_index), pair.label_path)
        else:
            if pair.label_map.defined is not None:
                self._check_ids(label, pair.label_map.defined, pair.label_path)
            label = pair.label_map.apply(label)
        if label.shape != image.shape[:2]:
            raise DatasetError(
                f"{pair.label_path}: label is {label.shape[1]}x{label.shape[0]} but image "
                f"{pair.image_path} is {image.shape[1]}x{image.shape[0]}"
            )
        sample = Sample(pair.name, image, label)
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def _check_ids(self, label: np.ndarray, defined: tuple[int, ...], path: Path) -> None:
        """Refuse ids the dataset does not define: scored as void or failing in the metric, they
        would misreport mIoU or stop a run without naming the file."""
        present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
        unknown = sorted(set(present.tolist()) - set(defined))
        if unknown:
            raise DatasetError(
                f"label map {path} holds values {unknown[:8]} that are not {self.classes.name} label "
                f"ids (expected {_spans(defined)}); convert the annotations to class ids"
            )

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def cache_in_memory(self) -> None:
        """Keep decoded samples after first use: training revisits every image each epoch."""
        if self._cache is None:
            self._cache = {}

    @property
    def names(self) -> list[str]:
        return [p.name for p in self._pairs]

    @property
    def files(self) -> list[Path]:
        """The image and label files it reads."""
        return [path for p in self._pairs for path in (p.image_path, p.label_path)]


def camvid(root: str | Path, split: str) -> SegmentationDataset:
    """CamVid as distributed with SegNet: ``{split}/*.png`` with ``{split}annot/*.png`` (void = 11)."""
    root = Path(root)
    image_dir, label_dir = root / split, root / f"{split}annot"
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise DatasetError(
                f"CamVid folder {d} not found: expected {root}/{{train,val,test}} with "
                f"matching {{split}}annot folders (the SegNet release layout)"
            )
    pairs = []
    # .PNG too: "has no *.png images (it holds 3 .PNG files): convert the images to PNG" was absurd
    images = (p for p in image_dir.glob("*") if p.suffix.lower() == ".png")
    for image_path in sorted(images, key=frame_order):
        label_path = label_dir / image_path.name
        if not label_path.is_file():
            raise DatasetError(f"CamVid image {image_path} has no label {label_path}")
        pairs.append(_Pair(image_path.stem, image_path, label_path, CAMVID_LABEL_IDS))
    if not pairs:
        others = Counter(p.suffix for p in image_dir.iterdir() if p.is_file() and p.suffix)
        if others:
            held = ", ".join(f"{n} {suffix}" for suffix, n in others.most_common(3))
            raise DatasetError(
                f"CamVid folder {image_dir} has no *.png images (it holds {held} files): the CamVid "
                "layout reads PNG images with PNG labels of the same name; convert the images to PNG"
            )
    return SegmentationDataset(pairs, CAMVID, f"CamVid split {split!r} in {root}")


CityscapesLabels = Literal["auto", "labelTrainIds", "labelIds"]


def cityscapes(root: str | Path, split: str, labels: CityscapesLabels = "auto") -> SegmentationDataset:
    """Cityscapes: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with ``gtFine`` labels.

    ``labelTrainIds`` files are used as they are, ``labelIds`` are mapped to train ids; ``auto``
    takes whichever exists, preferring train ids. A flat folder holding ``*_leftImg8bit.png`` and
    the ``gtFine`` files side by side (a sample set) is read the same way, whatever ``split``.
    """
    root = Path(root)
    if labels not in ("auto", "labelTrainIds", "labelIds"):
        raise DatasetError(f"cityscapes labels must be auto, labelTrainIds or labelIds, got {labels!r}")
    official = root / "leftImg8bit" / split
    if official.is_dir():
        images = sorted(official.glob("*/*_leftImg8bit.png"), key=frame_order)
        label_dir_of = lambda p: root / "gtFine" / split / p.parent.name
    elif (root / "leftImg8bit").is_dir():
        raise DatasetError(f"Cityscapes split folder {official} not found")
    else:
        images = sorted(root.glob("*_leftImg8bit.png"), key=frame_order)
        label_dir_of = lambda p: p.parent
        if not images:
            raise DatasetError(
                f"no Cityscapes images in {root}: expected leftImg8bit/{split}/<city>/*_leftImg8bit.png "
                "or a flat folder of *_leftImg8bit.png files"
            )
    pairs = []
    for image_path in images:
        stem = image_path.name[: -len("_leftImg8bit.png")]
        label_dir = label_dir_of(image_path)
        train_ids = label_dir / f"{stem}_gtFine_labelTrainIds.png"
        label_ids = label_dir / f"{stem}_gtFine_labelIds.png"
        if labels in ("auto", "labelTrainIds") and train_ids.is_file():
            pairs.append(_Pair(stem, image_path, train_ids, None))
        elif labels in ("auto", "labelIds") and label_ids.is_file():
            pairs.append(_Pair(stem, image_path, label_ids, CITYSCAPES_LABEL_IDS))
        else:
            wanted = {
                "auto": "labelTrainIds or labelIds",
                "labelTrainIds": "labelTrainIds",
                "labelIds": "labelIds",
            }[labels]
            raise DatasetError(f"Cityscapes image {image_path} has no gtFine {wanted} file in {label_dir}")
    return SegmentationDataset(pairs, CITYSCAPES, f"Cityscapes split {split!r} in {root}")


DATASETS = {"camvid": camvid, "cityscapes": cityscapes}


def open_dataset(name: str, root: str | Path, split: str) -> SegmentationDataset:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name](root, split)
