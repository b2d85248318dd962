"""SegResult: labels at the engine's resolution, and at any frame's on request."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rtseg.data.labels import ClassSet
from rtseg.errors import ConfigError, InputTypeError
from rtseg.result import SegResult


def _result(labels: np.ndarray) -> SegResult:
    classes = ClassSet("test", ("road", "car", "sky"), ((128, 64, 128), (0, 0, 142), (70, 130, 180)))
    return SegResult(labels=labels, frame_index=0, is_keyframe=True, deep_age=0, classes=classes)


def test_labels_at_a_frame_size_are_nearest_neighbour() -> None:
    labels = np.array([[0, 1], [2, 1]], np.uint8)
    frame = np.zeros((4, 6, 3), np.uint8)
    big = _result(labels).labels_at(frame.shape)
    assert big.shape == (4, 6) and big.dtype == np.uint8
    assert set(np.unique(big)) == {0, 1, 2}  # no blended class ids
    assert (big[:2, :3] == 0).all() and (big[2:, :3] == 2).all() and (big[:, 3:] == 1).all()


def test_labels_at_their_own_size_are_not_copied() -> None:
    labels = np.zeros((3, 5), np.uint8)
    assert _result(labels).labels_at((3, 5)) is labels


def test_labels_at_refuses_shapes_it_cannot_resize_to() -> None:
    result = _result(np.zeros((3, 5), np.uint8))
    with pytest.raises(ConfigError, match=r"positive height and width, got \(0, 0\)"):
        result.labels_at((0, 0))
    with pytest.raises(InputTypeError, match=r"whole pixels, got \(96.0, 128.0\)"):
        result.labels_at((96.0, 128.0))
    with pytest.raises(InputTypeError, match="got 96"):
        result.labels_at(96)
    assert result.labels_at(np.zeros((6, 10, 3), np.uint8).shape).shape == (6, 10)


@pytest.mark.parametrize(
    ("source", "target"), [((360, 480), (720, 1280)), ((7, 5), (9, 6)), ((9, 6), (4, 4))]
)
def test_labels_at_take_the_label_under_each_pixel_centre(
    source: tuple[int, int], target: tuple[int, int]
) -> None:
    # Output pixel x covers source x' = (x + 0.5) * w_src / w_dst - 0.5, the bilinear image
    # resize's alignment; the label at its centre is floor((x + 0.5) * w_src / w_dst).
    # (Sizes chosen so that no centre falls exactly on a boundary between two labels.)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 12, source, dtype=np.uint8)
    rows = np.floor((np.arange(target[0]) + 0.5) * source[0] / target[0]).astype(int)
    cols = np.floor((np.arange(target[1]) + 0.5) * source[1] / target[1]).astype(int)
    np.testing.assert_array_equal(_result(labels).labels_at(target), labels[np.ix_(rows, cols)])


def test_a_result_with_a_wrong_field_is_refused_naming_it() -> None:
    good = _result(np.zeros((3, 5), np.uint8))
    assert SegResult(good.labels, 7, False, 2, good.classes, {"low": 1.0}, np.float32(0.5)).change == 0.5
    for changes, error, message in [
        (dict(frame_index="7"), InputTypeError, r"SegResult.frame_index must be an int .*got '7' \(str\)"),
        (dict(frame_index=np.int64(7)), InputTypeError, r"frame_index must be an int \(for a NumPy integer"),
        (dict(frame_index=-1), ConfigError, r"SegResult.frame_index must be >= 0, got -1"),
        (dict(deep_age=1.0), InputTypeError, r"SegResult.deep_age must be an int .*got 1.0 \(float\)"),
        (dict(deep_age=-2), ConfigError, r"SegResult.deep_age must be >= 0, got -2"),
        (dict(is_keyframe="no"), InputTypeError, r"SegResult.is_keyframe must be True or False, got 'no'"),
        (dict(is_keyframe=np.bool_(True)), InputTypeError, r"SegResult.is_keyframe must be True or False"),
        (
            dict(labels=[[0]]),
            InputTypeError,
            r"SegResult.labels must be an h x w uint8 NumPy array, got list",
        ),
        (dict(labels=np.zeros((3, 5), np.int64)), ConfigError, r"got shape \(3, 5\) dtype int64"),
        (dict(labels=np.zeros((1, 3, 5), np.uint8)), ConfigError, r"got shape \(1, 3, 5\) dtype uint8"),
        (dict(classes="camvid"), InputTypeError, r"SegResult.classes must be a rtseg ClassSet, got str"),
        (dict(timings=[1.0]), InputTypeError, r"SegResult.timings must be a mapping .*got list"),
        (dict(change="0.5"), InputTypeError, r"SegResult.change must be None or a number, got '0.5'"),
    ]:
        with pytest.raises(error, match=message):
            replace(good, **changes)
