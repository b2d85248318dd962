"""A small random-init ESPNet engine and a short synthetic drive: fast, and needing no data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtseg.engine import load
from rtseg.models import get_model
from rtseg.source import open_source

SIZE = (64, 48)


@pytest.fixture(scope="session")
def engine():
    torch.manual_seed(0)
    return load(get_model("espnet"), input_size=SIZE, backend="torch")


@pytest.fixture(scope="session")
def drive() -> list[np.ndarray]:
    with open_source(f"synthetic://drive?size={SIZE[0]}x{SIZE[1]}&seed=2&frames=16") as src:
        return [f.image for f in src]
