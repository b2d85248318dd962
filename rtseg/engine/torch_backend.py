"""The reference backend: the PyTorch model (the engine's own copy), in eval and inference mode."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from ..errors import BackendUnavailableError, ConfigError
from ..models.base import StagedSegmenter
from .backends import BACKEND_SPECS
from .base import Array, Engine, EngineInfo, Features, cuda_device_index
from .graphs import DeepGraph, HeadGraph, LowGraph, head_low_inputs, pick


def from_numpy(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` for any array a caller may pass (every backend takes these)."""
    # A flipped view (image[..., ::-1]) has negative strides, which torch cannot wrap.
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        # A read-only frame (np.frombuffer, a memory map): torch wraps it only with a warning
        # that writes would be undefined, and silencing that is process-wide state (threads).
        array = array.copy()
    return torch.from_numpy(array)


def _as_batch(image: Array, device: torch.device) -> torch.Tensor:
    t = from_numpy(image) if isinstance(image, np.ndarray) else image
    if t.dim() == 3:
        t = t.unsqueeze(0)
    return t.to(device, non_blocking=True)


class TorchEngine(Engine):
    """Runs the stages eagerly (or torch.compile'd); fp16 on CUDA when asked."""

    batch = BACKEND_SPECS["torch"].batch  # None: any NxHxWx3

    def __init__(
        self,
        model: StagedSegmenter,
        *,
        input_size: tuple[int, int],
        precision: str = "fp32",
        device: str = "cpu",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        allowed = BACKEND_SPECS["torch"].precisions
        if precision not in allowed:
            raise ConfigError(f"torch backend precision must be {' or '.join(allowed)}, got {precision!r}")
        if device != "cpu" and cuda_device_index(device) is None:
            raise ConfigError(f"torch backend device must be 'cpu' or 'cuda[:N]', got {device!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(
                "torch backend on cuda: this PyTorch build has no CUDA device "
                f"(torch {torch.__version__}); install a CUDA build of torch or use device='cpu'"
            )
        if precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("fp16 with the torch backend needs a CUDA device; use fp32 on CPU")
        spec = model.stage_spec
        w, h = input_size
        if w % spec.input_multiple or h % spec.input_multiple:
            raise ConfigError(
                f"{model.meta.model} needs an input size divisible by {spec.input_multiple}, got {w}x{h}"
            )
        self.meta = model.meta
        self.stage_spec = spec
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        # A snapshot, as the exported backends' engines are: the caller's network may go on being
        # trained (train(), optimizer steps), which on a shared module gave wrong labels and moved
        # its BatchNorm statistics; and eval() and Module.to would change its modes, device, dtype
        # and memory format in place (auto's other candidates export and time it too).
        model = copy.deepcopy(model).eval().requires_grad_(False)
        self.head_low_inputs = head_low_inputs(model, input_size)
        model = model.to(self.device, self._dtype)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._low = LowGraph(model, self.meta.preprocessing, channels_last, self._dtype, eager=True)
        self._deep = DeepGraph(model)
        self._head = HeadGraph(model, self.head_low_inputs, len(self.meta.classes), with_logits=False)
        self._head_logits = HeadGraph(model, self.head_low_inputs, len(self.meta.classes), with_logits=True)
        if compile:
            self._low_fn: Any = torch.compile(self._low)
            self._deep_fn: Any = torch.compile(self._deep)
            self._head_fn: Any = torch.compile(self._head)
        else:
            self._low_fn, self._deep_fn, self._head_fn = self._low, self._deep, self._head
        flags = [f for f, on in (("channels_last", channels_last), ("torch.compile", compile)) if on]
        self.info = EngineInfo(
            model=self.meta.model,
            backend="torch",
            precision=precision,
            device=str(self.device),
            input_size=(w, h),
            library=f"torch {torch.__version__}",
            notes=tuple(flags),
            threads=torch.get_num_threads() if self.device.type == "cpu" else None,
        )

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _release(self) -> None:
        """Drop the stage modules: the engine's copy of the network (on CUDA, its memory) goes
        with them, not with the last reference to a closed engine."""
        self._low_fn = self._deep_fn = self._head_fn = None
        del self._low, self._deep, self._head, self._head_logits
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def run_low(self, image: Array) -> Features:
        self._check_open()
        self.check_image(image)
        x = _as_batch(image, self.device)
        outputs = self._low_fn(x)
        return dict(zip(self._low.names, outputs, strict=True))

    @torch.inference_mode()
    def run_deep(self, low: Features) -> Features:
        self._check_open()
        outputs = self._deep_fn(*pick(low, self._deep.input_names))
        return dict(zip(self._deep.names, outputs, strict=True))

    @torch.inference_mode()
    def run_head(self, low: Features, deep: Features, *, logits: bool = False) -> Any:
        self._check_open()
        args = (*pick(low, self.head_low_inputs), *pick(deep, self._head.deep_names))
        if logits:
            labels, out = self._head_logits(*args)
            return labels.cpu().numpy(), out.float()
        (labels,) = self._head_fn(*args)
        return labels.cpu().numpy()
