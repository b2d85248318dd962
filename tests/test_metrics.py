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
