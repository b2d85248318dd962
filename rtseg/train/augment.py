"""Joint image/label augmentation for training: random scale, crop and horizontal flip."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class ScaleCropFlip:
    """Scale by a factor from ``scale_range``, take a random ``crop`` (w, h), flip half the time.

    Images are resized bilinearly and labels by nearest neighbour at the same pixel centres; a
    crop larger than the scaled image is padded with zeros (image) and ``ignore_index`` (label),
    so padding never trains.
    """

    crop: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    ignore_index: int = 255

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"ScaleCropFlip.scale_range must satisfy 0 < min <= max, got {self.scale_range}")
        if self.crop[0] <= 0 or self.crop[1] <= 0:
            raise ValueError(f"ScaleCropFlip.crop must be positive (w, h), got {self.crop}")

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        s = float(rng.uniform(*self.scale_range))
        h, w = label.shape
        sw, sh = max(1, round(w * s)), max(1, round(h * s))
        if (sw, sh) != (w, h):
            image = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label, (sw, sh), interpolation=cv2.INTER_NEAREST_EXACT)
        cw, ch = self.crop
        if sw < cw or sh < ch:
            pad_w, pad_h = max(0, cw - sw), max(0, ch - sh)
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            label = cv2.copyMakeBorder(
                label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=self.ignore_index
            )
            sh, sw = label.shape
        x = int(rng.integers(0, sw - cw + 1))
        y = int(rng.integers(0, sh - ch + 1))
        image = image[y : y + ch, x : x + cw]
        label = label[y : y + ch, x : x + cw]
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
            label = label[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(label)
