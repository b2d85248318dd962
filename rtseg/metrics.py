"""Confusion-matrix segmentation metrics: one matrix over a whole split, vectorised bincount."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class ConfusionMatrix:
    """Accumulates ``matrix[true, pred]`` over many label maps; ignore-labelled pixels are skipped."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, target: np.ndarray, pred: np.ndarray) -> None:
        if target.shape != pred.shape:
            raise ValueError(f"target shape {target.shape} != prediction shape {pred.shape}")
        n = self.num_classes
        t = target.ravel()
        valid = t != self.ignore_index
        t = t[valid].astype(np.int64)
        p = pred.ravel()[valid].astype(np.int64)
        # A negative id would land in another cell of the flattened matrix, not fail.
        if t.size and (t.max() >= n or p.max() >= n or t.min() < 0 or p.min() < 0):
            raise ValueError(
                f"labels must be < {n} and >= 0, or the ignore index {self.ignore_index}; "
                f"got target {t.min()}..{t.max()}, prediction {p.min()}..{p.max()}"
            )
        self.matrix += np.bincount(t * n + p, minlength=n * n).reshape(n, n)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix

    def result(self) -> SegmentationScores:
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        union = m.sum(0) + m.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
        total = m.sum()
        return SegmentationScores(
            iou=tuple(float(v) for v in iou),
            pixel_accuracy=float(tp.sum() / total) if total else float("nan"),
            pixels=int(total),
        )


@dataclass(frozen=True)
class SegmentationScores:
    """IoU per class (NaN where a class never occurs nor is predicted) and pixel accuracy, in [0, 1]."""

    iou: tuple[float, ...]
    pixel_accuracy: float
    pixels: int

    @property
    def miou(self) -> float:
        """Mean over the classes whose union is non-empty."""
        values = [v for v in self.iou if not np.isnan(v)]
        return float(np.mean(values)) if values else float("nan")
