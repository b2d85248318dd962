"""One inference interface over several backends: ``load(...)`` returns an ``Engine``."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError
from ..models import StagedSegmenter, get_model
from .base import Engine, EngineInfo
from .torch_backend import TorchEngine

BACKENDS = ("torch",)


def load(
    model: str | StagedSegmenter,
    *,
    weights: str | os.PathLike[str] | None = None,
    backend: str = "torch",
    precision: str = "fp32",
    input_size: tuple[int, int] | None = None,
    device: str = "cpu",
    **options: Any,
) -> Engine:
    """Build (or fetch from the cache) an engine for ``model`` with ``weights``.

    ``model`` is a registry name or an already-built network (its ``.meta`` says what it is).
    ``input_size`` defaults to the size the weights were trained at.
    """
    net = model if isinstance(model, StagedSegmenter) else get_model(model, weights=weights)
    size = input_size or net.meta.preprocessing.input_size
    if backend == "torch":
        return TorchEngine(net, input_size=size, precision=precision, device=device, **options)
    raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Engine", "EngineInfo", "TorchEngine", "load"]
