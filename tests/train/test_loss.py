from __future__ import annotations

import math

import torch

from rtseg.train.loss import SegmentationLoss


def _logits(classes: int = 3) -> torch.Tensor:
    return torch.randn(2, classes, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)


def test_a_batch_of_void_pixels_only_costs_nothing_and_still_backpropagates() -> None:
    # mean cross-entropy over no pixels was 0/0 = NaN, which training reported as divergence
    weights = torch.tensor([1.0, 2.0, 3.0])
    loss_fn = SegmentationLoss(3, class_weights=weights, aux_weights={"aux": 0.4})
    logits = _logits()
    void = torch.full((2, 8, 8), 255, dtype=torch.long)
    total, parts = loss_fn(logits, {"aux": logits * 2}, void)
    assert float(total.detach()) == 0.0 and parts == {"main": 0.0, "aux": 0.0}
    total.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_void_pixels_are_left_out_of_the_mean() -> None:
    loss_fn = SegmentationLoss(3)
    logits = _logits()
    target = torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    target[:, :4] = 255
    total, _ = loss_fn(logits, {}, target)
    keep = target != 255
    expected = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])
    assert math.isclose(float(total.detach()), float(expected.detach()), rel_tol=1e-6)
