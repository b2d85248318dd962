"""Engine test fixtures: temporary engine and calibration folders, BN-primed random models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rtseg.models import StagedSegmenter, get_model
from rtseg.models.base import prime_batchnorm


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
    w, h = size
    generator = torch.Generator().manual_seed(seed)
    prime_batchnorm(model, (torch.randn(2, 3, h, w, generator=generator) for _ in range(3)))
    return model


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
