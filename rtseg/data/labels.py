"""Class sets as data: names, RGB palette, ignore label, and dataset id maps."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError

IGNORE_INDEX = 255
# Labels are uint8 and 255 is the ignore label: class ids 0..254.
MAX_CLASSES = 255


@dataclass(frozen=True)
class ClassSet:
    """The classes a model predicts, in output-channel order, with their RGB colours."""

    name: str
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError(f"ClassSet {self.name!r}: names must not be empty")
        if len(self.palette) != len(self.names):
            raise ValueError(
                f"ClassSet {self.name!r}: palette has {len(self.palette)} colours, "
                f"expected one per class ({len(self.names)})"
            )
        for i, colour in enumerate(self.palette):
            if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
                raise ValueError(
                    f"ClassSet {self.name!r}: palette[{i}] must be 3 values in 0..255, got {colour!r}"
                )
        if not 0 <= self.ignore_index <= 255 or self.ignore_index < len(self.names):
            raise ValueError(
                f"ClassSet {self.name!r}: ignore_index must be in {len(self.names)}..255, "
                f"got {self.ignore_index}"
            )

    def __len__(self) -> int:
        return len(self.names)

    def palette_bgr_lut(self) -> np.ndarray:
        """A 256x1x3 uint8 BGR table for cv2.LUT; labels beyond the classes draw black."""
        lut = np.zeros((256, 1, 3), dtype=np.uint8)
        rgb = np.asarray(self.palette, dtype=np.uint8)
        lut[: len(rgb), 0, :] = rgb[:, ::-1]
        return lut

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "names": list(self.names),
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ClassSet:
        return cls(
            name=str(data["name"]),
            names=tuple(str(n) for n in data["names"]),
            palette=tuple(tuple(int(v) for v in c) for c in data["palette"]),  # type: ignore[misc]
            ignore_index=int(data.get("ignore_index", IGNORE_INDEX)),
        )


@dataclass(frozen=True)
class LabelIdMap:
    """Maps a dataset's raw label ids to train ids through a 256-entry lookup table."""

    table: tuple[int, ...] = field(repr=False)
    # The raw ids the dataset defines (None: all 256). Any other id in a label map is a broken
    # annotation, refused rather than scored as void.
    defined: tuple[int, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.table) != 256:
            raise ValueError(f"LabelIdMap.table must have 256 entries, got {len(self.table)}")

    def apply(self, label_ids: np.ndarray) -> np.ndarray:
        if label_ids.dtype != np.uint8:
            raise ValueError(f"label ids must be uint8, got {label_ids.dtype}")
        return np.asarray(self.table, dtype=np.uint8)[label_ids]


CITYSCAPES = ClassSet(
    name="cityscapes",
    names=(
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    ),
    palette=(
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ),
)

# Official Cityscapes labelId -> trainId (cityscapesScripts labels.py); all others are ignored.
_CITYSCAPES_TRAIN_IDS = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
# labelIds are 0-33; the license plate's id -1 is stored as 255 (cityscapesScripts' json2labelImg).
CITYSCAPES_LABEL_IDS = LabelIdMap(
    table=tuple(_CITYSCAPES_TRAIN_IDS.get(i, IGNORE_INDEX) for i in range(256)),
    defined=(*range(34), IGNORE_INDEX),
)

CAMVID = ClassSet(
    name="camvid",
    names=(
        "sky",
        "building",
        "pole",
        "road",
        "pavement",
        "tree",
        "sign",
        "fence",
        "car",
        "pedestrian",
        "bicyclist",
    ),
    palette=(
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
    ),
)

# CamVid (SegNet release) marks void as 11; rtseg ignores it like every other ignore label.
CAMVID_VOID = 11
CAMVID_LABEL_IDS = LabelIdMap(
    table=tuple(i if i < CAMVID_VOID else IGNORE_INDEX for i in range(256)),
    defined=(*range(CAMVID_VOID + 1), IGNORE_INDEX),
)

CLASS_SETS: dict[str, ClassSet] = {c.name: c for c in (CITYSCAPES, CAMVID)}

# For each class of one set, the class of another that covers most of it. Fine-tuning starts a
# classifier's outputs from these classes' weights instead of from random ones.
CORRESPONDENCES: dict[tuple[str, str], dict[str, str]] = {
    ("camvid", "cityscapes"): {
        "sky": "sky",
        "building": "building",
        "pole": "pole",
        "road": "road",
        "pavement": "sidewalk",
        "tree": "vegetation",
        "sign": "traffic sign",
        "fence": "fence",
        "car": "car",
        "pedestrian": "person",
        "bicyclist": "rider",
    },
}


def corresponding_outputs(target: ClassSet, source: ClassSet) -> list[int] | None:
    """Output indices of ``source`` classes for each ``target`` class, or None if rtseg knows no
    correspondence between the two sets."""
    table = CORRESPONDENCES.get((target.name, source.name))
    if table is None or set(table) != set(target.names):
        return None
    return [source.names.index(table[name]) for name in target.names]


def numbered_classes(n: int) -> ClassSet:
    """Classes ``class_0..class_{n-1}`` with well-spread colours, for datasets without names."""
    if not 1 <= n <= MAX_CLASSES:
        raise ConfigError(f"number of classes must be in 1..{MAX_CLASSES}, got {n}")
    palette = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.7, 0.95)
        palette.append((round(r * 255), round(g * 255), round(b * 255)))
    return ClassSet(name=f"{n}-classes", names=tuple(f"class_{i}" for i in range(n)), palette=tuple(palette))
