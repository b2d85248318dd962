"""Class-weighted cross-entropy with the ignore label, plus a model's auxiliary losses."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.datasets import Sample


def class_frequencies(samples: Iterable[Sample], num_classes: int, ignore_index: int = 255) -> np.ndarray:
    counts = np.zeros(num_classes, dtype=np.int64)
    for s in samples:
        valid = s.label[s.label != ignore_index]
        counts += np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
    return counts / max(counts.sum(), 1)


def enet_class_weights(frequencies: np.ndarray, c: float = 1.10) -> np.ndarray:
    """ENet's weighting ``1 / ln(c + p_class)``: bounded (at most 1/ln c) unlike inverse frequency."""
    if c <= 1.0:
        raise ValueError(f"class-weight constant c must be > 1, got {c}")
    return (1.0 / np.log(c + frequencies)).astype(np.float32)


class SegmentationLoss(torch.nn.Module):
    """Weighted CE on the main logits plus weighted CE on each auxiliary output.

    Logits at a lower stride than the labels are upsampled bilinearly before the loss, as is usual
    for ICNet/DeepLab training; a void output channel beyond ``num_classes`` is dropped.
    """

    def __init__(
        self,
        num_classes: int,
        class_weights: Tensor | None = None,
        ignore_index: int = 255,
        aux_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.aux_weights = dict(aux_weights or {})
        self.register_buffer("class_weights", class_weights, persistent=False)

    def _ce(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits[:, : self.num_classes]
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        if not bool((target != self.ignore_index).any()):
            # Every pixel void (a crop of an unlabelled area, sparse labels): the mean over no pixels
            # is 0/0 = NaN, which stopped training as divergence. Nothing to learn here: zero, with
            # a graph, so backward and the optimizer step still run.
            return logits.float().sum() * 0.0
        return F.cross_entropy(
            logits.float(), target, weight=self.class_weights, ignore_index=self.ignore_index
        )

    def forward(
        self, logits: Tensor, aux: Mapping[str, Tensor], target: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        main = self._ce(logits, target)
        total = main
        parts = {"main": float(main.detach())}
        for name, out in aux.items():
            weight = self.aux_weights.get(name, 0.0)
            if weight:
                value = self._ce(out, target)
                total = total + weight * value
                parts[name] = float(value.detach())
        return total, parts
