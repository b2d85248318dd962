"""Fixtures for the ZeroMQ tests: a small random-init engine and real loopback endpoints."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rtseg.engine import Engine, load
from rtseg.models import get_model


@pytest.fixture(scope="session")
def small_engine() -> Engine:
    """ESPNet with random weights at 64x48: real stages, fast enough for hundreds of requests."""
    return load(get_model("espnet"), input_size=(64, 48))


def _free_tcp_port() -> int:
    # A port nothing listens on right now (the OS picks it; another process may take it later, rarely).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> Callable[[], int]:
    return _free_tcp_port


@pytest.fixture
def tcp_endpoint() -> str:
    return f"tcp://127.0.0.1:{_free_tcp_port()}"


@pytest.fixture
def ipc_endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path / 'rtseg.sock'}"


def _random_images(n: int, shape: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


@pytest.fixture
def random_images() -> Callable[..., list[np.ndarray]]:
    return _random_images
