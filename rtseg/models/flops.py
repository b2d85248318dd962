"""Measured FLOPs per stage, so the low/deep/head split can be checked rather than asserted."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .base import StagedSegmenter


@dataclass(frozen=True)
class StageFlops:
    """Convolution and matmul FLOPs (2 x MACs) of each stage for one input size."""

    low: int
    deep: int
    head: int

    @property
    def total(self) -> int:
        return self.low + self.deep + self.head

    def share(self, stage: str) -> float:
        return getattr(self, stage) / self.total

    @property
    def per_frame_share(self) -> float:
        """Fraction of a full pass that a reused (non-key) frame still pays: low + head."""
        return (self.low + self.head) / self.total


def _count(fn, *args) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn(*args)
    return int(counter.get_total_flops())


@torch.inference_mode()
def stage_flops(model: StagedSegmenter, size: tuple[int, int], batch: int = 1) -> StageFlops:
    """FLOPs of ``forward_low``, ``forward_deep`` and ``forward_head`` at ``size`` = (width, height)."""
    was_training = model.training
    model.eval()
    try:
        weight = next(model.parameters())  # not the default dtype: a caller's may be float64
        x = torch.zeros(batch, 3, size[1], size[0], dtype=weight.dtype, device=weight.device)
        low = model.forward_low(x)
        deep = model.forward_deep(low)
        return StageFlops(
            low=_count(model.forward_low, x),
            deep=_count(model.forward_deep, low),
            head=_count(model.forward_head, low, deep),
        )
    finally:
        model.train(was_training)
