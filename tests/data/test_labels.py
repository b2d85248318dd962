from __future__ import annotations

import numpy as np
import pytest

from rtseg.data.labels import (
    CAMVID,
    CAMVID_LABEL_IDS,
    CITYSCAPES,
    CITYSCAPES_LABEL_IDS,
    ClassSet,
    numbered_classes,
)
from rtseg.errors import ConfigError


def test_cityscapes_train_classes_and_colours() -> None:
    assert len(CITYSCAPES) == 19
    assert CITYSCAPES.names[0] == "road" and CITYSCAPES.palette[0] == (128, 64, 128)
    assert CITYSCAPES.names[13] == "car" and CITYSCAPES.palette[13] == (0, 0, 142)
    assert CITYSCAPES.ignore_index == 255


def test_cityscapes_label_id_map() -> None:
    ids = np.array([[0, 7, 8, 26], [33, 34, 255, 15]], dtype=np.uint8)
    assert CITYSCAPES_LABEL_IDS.apply(ids).tolist() == [[255, 0, 1, 13], [18, 255, 255, 255]]


def test_camvid_void_is_ignored() -> None:
    assert len(CAMVID) == 11
    assert CAMVID_LABEL_IDS.apply(np.array([0, 10, 11], dtype=np.uint8)).tolist() == [0, 10, 255]


def test_palette_lut_is_bgr() -> None:
    lut = CITYSCAPES.palette_bgr_lut()
    assert lut.shape == (256, 1, 3)
    assert tuple(lut[13, 0]) == (142, 0, 0)
    assert tuple(lut[200, 0]) == (0, 0, 0)


def test_classset_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="palette has 1 colours, expected one per class"):
        ClassSet("x", ("a", "b"), ((0, 0, 0),))
    with pytest.raises(ValueError, match=r"palette\[0\] must be 3 values in 0..255"):
        ClassSet("x", ("a",), ((0, 0, 300),))


def test_numbered_classes_are_distinct() -> None:
    classes = numbered_classes(30)
    assert len(set(classes.palette)) == 30
    assert ClassSet.from_dict(classes.to_dict()) == classes


@pytest.mark.parametrize("n", [0, 256])
def test_numbered_classes_out_of_range_is_a_config_error(n: int) -> None:
    with pytest.raises(ConfigError, match=rf"number of classes must be in 1..255, got {n}"):
        numbered_classes(n)
