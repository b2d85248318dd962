"""The inference interface every backend implements: the model's three stages, compiled.

Inputs are uint8 BGR frames already at the engine's input size, as an HxWx3 NumPy array (an
OpenCV image, used without a copy) or a torch tensor. The torch backend also takes a batch,
NxHxWx3 with any N; the compiled backends (onnxruntime, openvino, tensorrt, torch2trt) are built
for one image and take 1xHxWx3 at most, refusing N > 1 with ConfigError. ``run_head`` returns
uint8 class labels at the model's output resolution: the argmax happens inside the engine.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import process
from ..errors import ConfigError, EngineClosedError, InputTypeError
from ..models.base import StageSpec
from ..models.checkpoint import WeightsMeta
from .backends import BACKEND_OPTIONS, CUDA_ONLY, default_device  # noqa: F401 (their old home)


def cuda_device_index(device: str) -> int | None:
    """N for 'cuda' (0) or 'cuda:N'; None for any other device string."""
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    return int(match.group(1) or 0) if match else None


Array = np.ndarray | torch.Tensor
Features = dict[str, Any]


@dataclass(frozen=True)
class EngineInfo:
    """What was built and where: printed by the CLI and stored with benchmark results."""

    model: str
    backend: str
    precision: str
    device: str
    input_size: tuple[int, int]
    library: str  # e.g. "onnxruntime 1.31.1"
    artifacts: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    threads: int | None = None  # CPU threads the backend really runs with (None: not known)


class Engine(ABC):
    """Three stage entry points plus ``run``; subclasses hold the compiled graphs.

    ``close()`` is final for every backend: afterwards each stage entry point raises
    ``EngineClosedError`` (also for torch, which could still run) so code that closes an engine
    it still uses fails the same way whatever backend it was tested with. Load a new engine
    instead of reusing a closed one; closing twice is harmless.
    """

    info: EngineInfo
    meta: WeightsMeta
    stage_spec: StageSpec
    head_low_inputs: tuple[str, ...]
    # The one batch size the compiled graphs take (their shapes are fixed at export); None: any N.
    # Each backend's engine sets its registry entry's (``backends.BackendSpec.batch``).
    batch: int | None = None
    _closed: bool = False
    _pid: int = process.current  # set per engine by __new__

    def __new__(cls, *args: Any, **kwargs: Any) -> Engine:
        self = super().__new__(cls)
        self._pid = process.current  # the process that built it: its native handles live there
        process.track(self)
        return self

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        """Called first by each backend's stage entry points (cheap: an attribute read, an int
        compare). In a process forked after the build it raises ConfigError instead of running
        (ONNX Runtime, torch's OpenMP hang there)."""
        if self._closed or self._pid != process.current:
            if self._pid != process.current:
                raise process.built_elsewhere(f"{self.info.backend} engine ({self.info.model})", self._pid)
            raise EngineClosedError(
                f"this {self.info.backend} engine ({self.info.model}) is closed; load a new engine to run it"
            )

    @property
    def input_size(self) -> tuple[int, int]:
        return self.info.input_size

    @property
    def output_size(self) -> tuple[int, int]:
        s = self.stage_spec.output_stride
        return self.input_size[0] // s, self.input_size[1] // s

    @property
    def num_classes(self) -> int:
        return len(self.meta.classes)

    def check_image(self, image: Array) -> None:
        if not isinstance(image, (np.ndarray, torch.Tensor)):
            raise InputTypeError(
                f"{self.info.backend} engine expects a uint8 BGR NumPy array (or torch tensor), "
                f"got {type(image).__name__}"
            )
        shape = tuple(image.shape)
        w, h = self.input_size
        ok = (len(shape) == 3 and shape == (h, w, 3)) or (len(shape) == 4 and shape[1:] == (h, w, 3))
        if not ok:
            raise ConfigError(
                f"{self.info.backend} engine expects uint8 BGR images of {w}x{h} "
                f"(HxWx3 = {(h, w, 3)} or NxHxWx3), got shape {shape}; resize frames first"
            )
        if image.dtype not in (np.uint8, torch.uint8):
            raise ConfigError(f"engine input must be uint8, got {image.dtype}")
        if self.batch is not None and len(shape) == 4 and shape[0] != self.batch:
            raise ConfigError(
                f"{self.info.backend} engines take a batch of {self.batch} (one HxWx3 image per "
                f"call; the torch backend takes N), got a batch of {shape[0]}"
            )

    @abstractmethod
    def run_low(self, image: Array) -> Features: ...

    @abstractmethod
    def run_deep(self, low: Features) -> Features: ...

    @abstractmethod
    def run_head(self, low: Features, deep: Features, *, logits: bool = False) -> Any:
        """uint8 labels (N x h x w), or (labels, logits) when ``logits`` is true."""

    def synchronize(self) -> None:  # noqa: B027 (a no-op where stages return finished host arrays)
        """Wait for the device work this engine has queued. GPU backends return from ``run_low`` and
        ``run_deep`` as soon as the work is queued (only the head's labels, copied to the host, wait
        for it): code that times one stage calls this before reading the clock."""

    def run(self, image: Array, *, logits: bool = False) -> Any:
        low = self.run_low(image)
        return self.run_head(low, self.run_deep(low), logits=logits)

    def warmup(self, iterations: int = 3) -> None:
        """First calls pay for allocation and kernel selection: do them before timing anything."""
        w, h = self.input_size
        image = np.zeros((h, w, 3), dtype=np.uint8)
        for _ in range(iterations):
            self.run(image)

    def close(self) -> None:
        """Mark the engine closed and release its sessions or CUDA buffers (``_release``).
        In a process forked after the build it only marks it closed and leaves the handles alone:
        they belong to the parent, and destroying them in a forked child hangs (rtseg.process)."""
        if self._pid != process.current:
            self._closed = True
            return
        if not self._closed:
            self._closed = True
            self._release()

    def _release(self) -> None:  # noqa: B027 (a no-op where there is nothing native to free)
        """Free what the engine holds; called once, by the first ``close()`` in its own process."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
