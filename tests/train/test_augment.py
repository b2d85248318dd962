from __future__ import annotations

import cv2
import numpy as np
import pytest

from rtseg.train.augment import ScaleCropFlip
from rtseg.train.loss import enet_class_weights


def test_crop_is_exact_size_and_pads_with_ignore() -> None:
    aug = ScaleCropFlip(crop=(40, 30), scale_range=(0.5, 0.5))
    image = np.full((20, 20, 3), 7, np.uint8)
    label = np.zeros((20, 20), np.uint8)
    out_image, out_label = aug(image, label, np.random.default_rng(0))
    assert out_image.shape == (30, 40, 3) and out_label.shape == (30, 40)
    assert (out_label == 255).sum() == 40 * 30 - 10 * 10  # only the scaled 10x10 image is real


def test_same_seed_same_augmentation() -> None:
    aug = ScaleCropFlip(crop=(16, 16))
    image = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    label = np.random.default_rng(2).integers(0, 11, (32, 32), dtype=np.uint8)
    a = aug(image, label, np.random.default_rng((0, 3, 5)))
    b = aug(image, label, np.random.default_rng((0, 3, 5)))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_labels_stay_labels() -> None:
    aug = ScaleCropFlip(crop=(24, 24), scale_range=(0.7, 1.9))
    label = np.random.default_rng(0).integers(0, 4, (32, 32), dtype=np.uint8)
    _, out = aug(np.zeros((32, 32, 3), np.uint8), label, np.random.default_rng(3))
    assert set(np.unique(out)) <= {0, 1, 2, 3, 255}  # nearest neighbour: no blended class ids


def test_image_and_label_stay_aligned_through_crop_and_flip() -> None:
    # The image is its label times 20: any crop or flip applied to one and not the other shows.
    aug = ScaleCropFlip(crop=(24, 16), scale_range=(1.0, 1.0))
    label = np.random.default_rng(0).integers(0, 11, (32, 48), dtype=np.uint8)
    image = np.dstack([label * 20] * 3)
    for seed in range(20):
        out_image, out_label = aug(image, label, np.random.default_rng(seed))
        assert np.array_equal(out_image[..., 0], out_label * 20), f"seed {seed}"


def test_image_and_label_stay_aligned_through_scaling() -> None:
    # Blocks of 8x8 pixels: where a scaled label's 3x3 neighbourhood is one class, the bilinear
    # image (up to 1.8x, so blending reaches one source pixel either side) is that class's value.
    aug = ScaleCropFlip(crop=(24, 16), scale_range=(0.6, 1.8))
    blocks = np.random.default_rng(0).integers(0, 11, (4, 6), dtype=np.uint8)
    label = np.kron(blocks, np.ones((8, 8), np.uint8))
    image = np.dstack([label * 20] * 3)
    kernel = np.ones((3, 3), np.uint8)
    for seed in range(20):
        out_image, out_label = aug(image, label, np.random.default_rng(seed))
        # the crop's edge pixels are left out: their neighbours beyond the crop are not seen
        inside = (cv2.erode(out_label, kernel) == cv2.dilate(out_label, kernel))[1:-1, 1:-1]
        agree = (out_image[..., 0] == out_label * 20)[1:-1, 1:-1]
        assert inside.mean() > 0.3 and agree[inside].all(), f"seed {seed}"


def test_enet_weights_are_bounded() -> None:
    w = enet_class_weights(np.array([0.9, 0.1, 0.0]), c=1.10)
    assert w[0] < w[1] < w[2] == pytest.approx(1 / np.log(1.10))
    with pytest.raises(ValueError, match="must be > 1"):
        enet_class_weights(np.array([1.0]), c=1.0)
