"""The engine comparison's BatchNorm priming of random-weight models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtseg.bench.engines import prime_batchnorm
from rtseg.errors import ConfigError
from rtseg.models import get_model


def _frames(n: int) -> list[np.ndarray]:
    return [np.random.default_rng(i).integers(0, 256, (64, 128, 3), dtype=np.uint8) for i in range(n)]


def test_priming_sets_running_statistics_and_leaves_eval_mode(one_torch_thread: None) -> None:
    # DeepLab's ASPP image pool ends in a 1x1 map: a batch of one would fail in its BatchNorm.
    torch.manual_seed(0)
    net = get_model("deeplabv3plus-mobilenetv2")
    prime_batchnorm(net, _frames(4), net.meta.preprocessing)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert not net.training
    assert all(bn.momentum == 0.1 for bn in norms)
    assert all(int(bn.num_batches_tracked) == 2 for bn in norms)
    first = norms[0]
    assert not torch.allclose(first.running_mean, torch.zeros_like(first.running_mean))


def test_priming_needs_two_frames() -> None:
    net = get_model("espnet-c")
    with pytest.raises(ConfigError, match="at least 2 frames, got 1"):
        prime_batchnorm(net, _frames(1), net.meta.preprocessing)
