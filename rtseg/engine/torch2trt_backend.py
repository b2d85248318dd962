"""torch2trt backend: NVIDIA-AI-IOT's torch2trt converts each stage module to TensorRT directly.

torch2trt is not on PyPI; it is installed from its repository next to TensorRT and a CUDA build
of torch. Conversions are not cached (torch2trt has its own state-dict format); this backend
exists as a second TensorRT path to compare against ``tensorrt``. Like the TensorRT backend,
it has not yet run on a GPU.

torch2trt maps only bool, int8, int32, float16 and float32 tensors to TensorRT, and its ``max``
converter gives no indices: the low stage is converted on a float32 image (cast from uint8 in
torch) and the head on its logits alone, the argmax to uint8 labels running in torch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import BackendUnavailableError, ConfigError
from ..models.base import StagedSegmenter
from .backends import BACKEND_SPECS
from .base import Array, Engine, EngineInfo, Features
from .cache import ArtifactCache
from .calibration import CalibrationList
from .graphs import DeepGraph, LowGraph, head_low_inputs, labels_from, pick
from .torch_backend import from_numpy

INSTALL = (
    "torch2trt is not on PyPI: install TensorRT and a CUDA build of torch, then "
    "git clone https://github.com/NVIDIA-AI-IOT/torch2trt && cd torch2trt && pip install ."
)


def _torch2trt() -> Any:
    from .tensorrt_backend import import_tensorrt

    try:
        from torch2trt import torch2trt
    except ImportError as exc:
        if exc.name == "tensorrt":
            import_tensorrt()  # torch2trt is there but TensorRT is not: name TensorRT and how to install it
        raise BackendUnavailableError(
            f"the torch2trt backend needs the torch2trt package. {INSTALL}"
        ) from None
    import_tensorrt()  # the TensorRT 10 check
    return torch2trt


# TensorRT 8 API that TensorRT 10 removed, as torch2trt releases from before it call it.
_REMOVED_IN_TRT10 = (
    "max_workspace_size",
    "max_batch_size",
    "build_engine",
    "get_binding_index",
    "execute_async",
)


def convert_module(convert: Callable[..., Any], module: nn.Module, inputs: list, **options: Any) -> Any:
    """``torch2trt(module, inputs, ...)``; a torch2trt that predates TensorRT 10 fails inside with an
    AttributeError on an API TensorRT 10 removed, which is said as such (what to install)."""
    try:
        return convert(module, inputs, **options)
    except AttributeError as exc:
        removed = getattr(exc, "name", None) in _REMOVED_IN_TRT10 or any(
            f"'{name}'" in str(exc) for name in _REMOVED_IN_TRT10
        )
        if not removed:
            raise
        raise BackendUnavailableError(
            f"this torch2trt predates TensorRT 10 ({exc}): install a current one. {INSTALL}"
        ) from exc


def as_tuple(value: Any) -> tuple:
    """A converted module's outputs as a tuple: torch2trt's TRTModule returns a lone output bare."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


class HeadLogits(nn.Module):
    """The head up to its logits (what torch2trt converts; the argmax runs in torch)."""

    def __init__(self, model: StagedSegmenter, low_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.low_names = low_names
        self.deep_names = tuple(f.name for f in model.stage_spec.deep)

    def forward(self, *inputs: Tensor) -> Tensor:
        n = len(self.low_names)
        low = dict(zip(self.low_names, inputs[:n], strict=True))
        deep = dict(zip(self.deep_names, inputs[n:], strict=True))
        return self.model.forward_head(low, deep)


def calibration_sets(
    low: nn.Module, deep: DeepGraph, frames: list[Tensor], head_low: tuple[str, ...]
) -> tuple[list[list[Tensor]], list[list[Tensor]], list[list[Tensor]]]:
    """Each stage's calibration inputs, one list per frame, without the batch dimension (the
    form torch2trt's DatasetCalibrator stacks into batches), computed by the fp32 stages."""
    sets: tuple[list, list, list] = ([], [], [])
    with torch.no_grad():
        for frame in frames:
            low_out = dict(zip(low.names, as_tuple(low(frame)), strict=True))
            deep_in = pick(low_out, deep.input_names)
            deep_out = as_tuple(deep(*deep_in))
            for target, values in zip(
                sets, ([frame], deep_in, [*pick(low_out, head_low), *deep_out]), strict=True
            ):
                target.append([v[0] for v in values])
    return sets


class Torch2TrtEngine(Engine):
    """The three stage modules converted with ``torch2trt``; features are torch CUDA tensors."""

    # converted on one example image (fixed shapes under TensorRT 10)
    batch = BACKEND_SPECS["torch2trt"].batch

    def __init__(
        self,
        net: StagedSegmenter,
        *,
        input_size: tuple[int, int],
        precision: str,
        device: str,
        calibration: CalibrationList | None = None,
        workspace_gb: float = 4.0,
    ) -> None:
        convert = _torch2trt()
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                "the torch2trt backend needs an NVIDIA GPU and a CUDA build of torch "
                f"(this is {torch.__version__})"
            )
        if precision == "int8" and calibration is None:
            raise ConfigError("torch2trt int8 needs a calibration list (rtseg calibrate)")
        self.device = torch.device(device)
        self.meta = net.meta
        self.stage_spec = net.stage_spec
        self.head_low_inputs = head_low_inputs(net.eval(), input_size)
        self._num_classes = len(net.meta.classes)
        if any(p.device != self.device for p in net.parameters()):
            # Module.to moves in place: the caller's network stays where it was (as TorchEngine's).
            net = copy.deepcopy(net)
        net = net.to(self.device)
        w, h = input_size
        low = LowGraph(net, net.meta.preprocessing).eval()  # takes the float32 image as well
        deep = DeepGraph(net).eval()
        head = HeadLogits(net, self.head_low_inputs).eval()
        options: dict[str, Any] = {
            "fp16_mode": precision in ("fp16", "int8"),
            "int8_mode": precision == "int8",
            "max_workspace_size": int(workspace_gb * 2**30),  # the WORKSPACE pool on TensorRT 10
        }
        with torch.cuda.device(self.device):
            image = torch.zeros(1, h, w, 3, dtype=torch.float32, device=self.device)
            with torch.no_grad():
                low_out = dict(zip(low.names, as_tuple(low(image)), strict=True))
                deep_out = dict(
                    zip(deep.names, as_tuple(deep(*pick(low_out, deep.input_names))), strict=True)
                )
            datasets: tuple[Any, Any, Any] = (None, None, None)
            if precision == "int8":
                frames = [
                    torch.from_numpy(f[None]).to(self.device, torch.float32)
                    for f in calibration.frames(input_size)  # type: ignore[union-attr]
                ]
                datasets = calibration_sets(low, deep, frames, self.head_low_inputs)
            head_args = [*pick(low_out, self.head_low_inputs), *pick(deep_out, deep.names)]
            self._low = convert_module(convert, low, [image], int8_calib_dataset=datasets[0], **options)
            self._deep = convert_module(
                convert, deep, pick(low_out, deep.input_names), int8_calib_dataset=datasets[1], **options
            )
            self._head = convert_module(convert, head, head_args, int8_calib_dataset=datasets[2], **options)
        self._low_names = low.names
        self._deep_inputs, self._deep_names = deep.input_names, deep.names
        self.info = EngineInfo(
            model=net.meta.model,
            backend="torch2trt",
            precision=precision,
            device=str(self.device),
            input_size=tuple(input_size),  # type: ignore[arg-type]
            library="torch2trt",
            notes=("not cached: converted at load",),
        )

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def run_low(self, image: Array) -> Features:
        self._check_open()
        self.check_image(image)
        x = from_numpy(image) if not isinstance(image, torch.Tensor) else image
        x = (x[None] if x.dim() == 3 else x).to(self.device).to(torch.float32)
        with torch.cuda.device(self.device):
            return dict(zip(self._low_names, as_tuple(self._low(x)), strict=True))

    @torch.inference_mode()
    def run_deep(self, low: Features) -> Features:
        self._check_open()
        with torch.cuda.device(self.device):
            out = self._deep(*pick(low, self._deep_inputs))
        return dict(zip(self._deep_names, as_tuple(out), strict=True))

    @torch.inference_mode()
    def run_head(self, low: Features, deep: Features, *, logits: bool = False) -> Any:
        self._check_open()
        with torch.cuda.device(self.device):
            (out,) = as_tuple(self._head(*pick(low, self.head_low_inputs), *pick(deep, self._deep_names)))
            labels = labels_from(out, self._num_classes).cpu().numpy()
        return (labels, out.float()) if logits else labels


def load_torch2trt(
    net: StagedSegmenter,
    *,
    size: tuple[int, int],
    precision: str,
    device: str,
    cache: ArtifactCache,
    calibration: CalibrationList | None = None,
    **options: Any,
) -> Torch2TrtEngine:
    del cache  # torch2trt conversions are not cached
    if calibration is not None and precision != "int8":
        raise ConfigError(f"calibration applies to int8 engines, not {precision}")
    _torch2trt()
    if not device.startswith("cuda"):
        raise ConfigError(f"the torch2trt backend runs on 'cuda' or 'cuda:N', got device {device!r}")
    return Torch2TrtEngine(
        net, input_size=size, precision=precision, device=device, calibration=calibration, **options
    )
