"""Engine test fixtures: temporary engine and calibration folders, BN-primed random models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rtseg.models import StagedSegmenter, get_model


@pytest.fixture(scope="session")
def shared_engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One engine cache for the session: exports are slow, every test reuses them."""
    return tmp_path_factory.mktemp("engines")


def primed(name: str, size: tuple[int, int] = (128, 64), seed: int = 0) -> StagedSegmenter:
    """A randomly initialised model whose BatchNorm statistics come from a few forward passes.

    Kaiming-initialised networks with unit BN statistics blow activations up layer after layer;
    real running statistics give the logit ranges a trained model has.
    """
    torch.manual_seed(seed)
    model = get_model(name)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the priming batches
    model.train()
    w, h = size
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 3, h, w, generator=generator))
    for bn in norms:
        bn.momentum = 0.1
    return model.eval()


def camera_image(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A uint8 BGR frame with smooth structure (gradients plus noise), like a camera image."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(w + h - 2, 1)], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def make_model():
    """``make_model(name, size=(w, h), seed=0)``: a BN-primed random model (see ``primed``)."""
    return primed


@pytest.fixture(scope="session")
def make_image():
    """``make_image((w, h), seed=0)``: a camera-like uint8 BGR frame."""
    return camera_image
