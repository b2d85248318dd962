"""The feature-change score that drives the adaptive scheduler.

Definition. Let ``F_t`` be one named low-stage feature map of frame ``t`` (C x H x W; by default
the first feature the deep stage reads, for ESPNet ``l1_cat``: the stride-2 stem features with the
pooled image) and ``P(F)`` its average over non-overlapping ``pool`` x ``pool`` cells. With ``k``
the last keyframe,

    change(t) = mean |P(F_t) - P(F_k)|  /  mean |P(F_k)|

the mean absolute difference of the pooled features, relative to the keyframe features' mean
magnitude, so one threshold means the same at any input scale or feature normalisation. Pooling
first makes the score cheap (the reference kept per keyframe is ``pool**2`` times smaller than the
feature) and insensitive to sensor noise and sub-cell jitter, while a moved or new object shifts
whole cells. It works on torch tensors (CPU or CUDA, computed where they live) and NumPy arrays
(ONNX Runtime, OpenVINO), which are pooled per channel with OpenCV's area resize (at a whole
factor the same box mean): NumPy's strided mean took 10-15 ms for ESPNet's stride-2 features at
480x360, and torch's avg_pool2d, 0.34 ms alone, cost 3-5 ms a frame in the pipeline, its OpenMP
workers spinning afterwards on a core the engine's next stage needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.base import whole_number


@dataclass(frozen=True)
class Summary:
    """A pooled copy of a feature map (owned: later engine calls cannot overwrite it) and its scale."""

    pooled: Any  # torch.Tensor or np.ndarray, float32, N x C x H/pool x W/pool
    magnitude: float  # mean |pooled|


@dataclass(frozen=True)
class ChangeMeasure:
    feature: str | None = None  # low feature name; None: the model's first deep input
    pool: int = 4
    eps: float = 1e-6

    def __post_init__(self) -> None:
        whole_number("ChangeMeasure", "pool", self.pool, 1)
        if not self.eps > 0:
            raise ConfigError(f"ChangeMeasure.eps must be positive, got {self.eps}")

    def resolve(self, low_names: tuple[str, ...], deep_inputs: tuple[str, ...]) -> str:
        """The feature name this measure reads for a model with these stage names."""
        name = self.feature or deep_inputs[0]
        if name not in low_names:
            raise ConfigError(
                f"change feature {name!r} is not a low feature; choose one of {list(low_names)}"
            )
        return name

    def summarize(self, value: Any) -> Summary:
        pooled = _pool(value, self.pool)
        return Summary(pooled, _mean_abs(pooled))

    def distance(self, current: Summary, reference: Summary) -> float:
        return _mean_abs_diff(current.pooled, reference.pooled) / (reference.magnitude + self.eps)

    def __call__(self, low: Mapping[str, Any], name: str, reference: Summary) -> tuple[float, Summary]:
        current = self.summarize(low[name])
        return self.distance(current, reference), current


def _pool(x: Any, k: int) -> Any:
    if isinstance(x, torch.Tensor):
        x = x.float()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        return F.avg_pool2d(x, k) if k > 1 else x.clone()
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim == 3:
        a = a[None]
    if k == 1:
        return a.copy()
    h, w = a.shape[2:]
    if h < k or w < k:
        raise ConfigError(f"change pooling {k} is larger than the feature map ({w}x{h})")
    # cv2's INTER_AREA at a whole factor is the same box mean, without waking torch's OpenMP
    # pool (whose workers then spin and take a core from the engine's next stage).
    n, c = a.shape[:2]
    out = np.empty((n, c, h // k, w // k), np.float32)
    for i in range(n):
        for j in range(c):
            cv2.resize(
                a[i, j, : h // k * k, : w // k * k],
                (w // k, h // k),
                dst=out[i, j],
                interpolation=cv2.INTER_AREA,
            )
    return out


def _mean_abs(x: Any) -> float:
    if isinstance(x, torch.Tensor):
        return float(x.abs().mean())
    return float(np.abs(x).mean())


def _mean_abs_diff(a: Any, b: Any) -> float:
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor):
            b = torch.from_numpy(np.asarray(b)).to(a.device)
        return float((a - b).abs_().mean())
    if isinstance(b, torch.Tensor):
        b = b.cpu().numpy()
    return float(np.abs(a - b).mean())
