from __future__ import annotations

import math

import numpy as np
import pytest

from rtseg.metrics import ConfusionMatrix


def test_iou_and_ignore() -> None:
    cm = ConfusionMatrix(3)
    target = np.array([[0, 0, 1, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 2]], dtype=np.uint8)
    cm.update(target, pred)
    scores = cm.result()
    assert scores.iou[0] == pytest.approx(1 / 2)
    assert scores.iou[1] == pytest.approx(1 / 2)
    assert math.isnan(scores.iou[2])  # never present nor predicted (the ignored pixel does not count)
    assert scores.miou == pytest.approx(0.5)
    assert scores.pixel_accuracy == pytest.approx(2 / 3)


def test_accumulates_over_images_not_mean_of_images() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 0, 0, 1], np.uint8), np.array([0, 0, 0, 0], np.uint8))
    cm.update(np.array([1], np.uint8), np.array([1], np.uint8))
    assert cm.result().iou[1] == pytest.approx(1 / 2)


def test_out_of_range_labels_are_an_error() -> None:
    with pytest.raises(ValueError, match="labels must be < 2"):
        ConfusionMatrix(2).update(np.array([3], np.uint8), np.array([0], np.uint8))


def test_negative_labels_are_an_error_not_another_cell() -> None:
    """A pixel of class 1 predicted -1 used to be counted as class 0 predicted as class 2."""
    with pytest.raises(
        ValueError, match=r"labels must be < 3 and >= 0, or the ignore index 255; got .*prediction -1\.\.1"
    ):
        ConfusionMatrix(3).update(np.array([1, 1]), np.array([-1, 1]))
    with pytest.raises(ValueError, match=r"labels must be < 3 and >= 0.*got target -1\.\.-1"):
        ConfusionMatrix(3).update(np.array([-1]), np.array([0]))


def test_hand_computed_matrix_with_absent_and_prediction_only_classes() -> None:
    cm = ConfusionMatrix(4)
    target = np.array([[0, 0, 1, 255], [1, 1, 255, 0]], np.uint8)
    pred = np.array([[0, 2, 1, 3], [0, 1, 2, 0]], np.uint8)
    cm.update(target, pred)
    assert cm.matrix.tolist() == [[2, 0, 1, 0], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    scores = cm.result()
    # class 2 is only predicted (IoU 0, counted in the mean); class 3 only on ignored pixels (NaN).
    assert scores.iou[:3] == pytest.approx((2 / 4, 2 / 3, 0.0)) and math.isnan(scores.iou[3])
    assert scores.miou == pytest.approx((2 / 4 + 2 / 3 + 0) / 3)
    assert scores.pixel_accuracy == pytest.approx(4 / 6) and scores.pixels == 6
