"""torch2trt backend: NVIDIA-AI-IOT's torch2trt converts each stage module to TensorRT directly.

torch2trt is not on PyPI; it is installed from its repository next to TensorRT and a CUDA build
of torch. Conversions are not cached (torch2trt has its own state-dict format); this backend
exists as a second TensorRT path to compare against ``tensorrt``. Like the TensorRT backend,
it has not yet run on a GPU.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import BackendUnavailableError, ConfigError
from ..models.base import StagedSegmenter
from .base import Array, Engine, EngineInfo, Features
from .cache import ArtifactCache
from .calibration import CalibrationList
from .graphs import DeepGraph, HeadGraph, LowGraph, head_low_inputs, pick

INSTALL = (
    "torch2trt is not on PyPI: install TensorRT and a CUDA build of torch, then "
    "git clone https://github.com/NVIDIA-AI-IOT/torch2trt && cd torch2trt && pip install ."
)


def _torch2trt() -> Any:
    try:
        from torch2trt import torch2trt
    except ImportError:
        raise BackendUnavailableError(
            f"the torch2trt backend needs the torch2trt package. {INSTALL}"
        ) from None
    return torch2trt


class Torch2TrtEngine(Engine):
    """The three stage modules converted with ``torch2trt``; features are torch CUDA tensors."""

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
        net = net.to(self.device)
        w, h = input_size
        low = LowGraph(net, net.meta.preprocessing).eval()
        deep = DeepGraph(net).eval()
        head = HeadGraph(
            net, self.head_low_inputs, len(net.meta.classes), with_logits=True, portable_labels=True
        ).eval()
        image = torch.zeros(1, h, w, 3, dtype=torch.uint8, device=self.device)
        with torch.no_grad():
            low_out = dict(zip(low.names, low(image), strict=True))
            deep_out = dict(zip(deep.names, deep(*pick(low_out, deep.input_names)), strict=True))
        options: dict[str, Any] = {
            "fp16_mode": precision in ("fp16", "int8"),
            "int8_mode": precision == "int8",
            "max_workspace_size": int(workspace_gb * 2**30),
        }
        if precision == "int8":
            frames = [torch.from_numpy(f[None]).to(self.device) for f in calibration.frames(input_size)]  # type: ignore[union-attr]
            options["int8_calib_dataset"] = [(f,) for f in frames]
        self._low = convert(low, [image], **options)
        self._low_names = low.names
        self._deep = convert(
            deep,
            pick(low_out, deep.input_names),
            **{k: v for k, v in options.items() if k != "int8_calib_dataset"},
        )
        self._deep_inputs, self._deep_names = deep.input_names, deep.names
        head_args = [*pick(low_out, self.head_low_inputs), *pick(deep_out, deep.names)]
        self._head = convert(
            head, head_args, **{k: v for k, v in options.items() if k != "int8_calib_dataset"}
        )
        self.info = EngineInfo(
            model=net.meta.model,
            backend="torch2trt",
            precision=precision,
            device=str(self.device),
            input_size=tuple(input_size),  # type: ignore[arg-type]
            library="torch2trt",
            notes=("not cached: converted at load",),
        )

    @torch.inference_mode()
    def run_low(self, image: Array) -> Features:
        self.check_image(image)
        x = torch.from_numpy(image) if not isinstance(image, torch.Tensor) else image
        x = (x[None] if x.dim() == 3 else x).to(self.device)
        return dict(zip(self._low_names, self._low(x), strict=True))

    @torch.inference_mode()
    def run_deep(self, low: Features) -> Features:
        return dict(zip(self._deep_names, self._deep(*pick(low, self._deep_inputs)), strict=True))

    @torch.inference_mode()
    def run_head(self, low: Features, deep: Features, *, logits: bool = False) -> Any:
        labels, out = self._head(*pick(low, self.head_low_inputs), *pick(deep, self._deep_names))
        return (labels.cpu().numpy(), out.float()) if logits else labels.cpu().numpy()


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
    _torch2trt()
    if not device.startswith("cuda"):
        raise ConfigError(f"the torch2trt backend runs on 'cuda' or 'cuda:N', got device {device!r}")
    return Torch2TrtEngine(
        net, input_size=size, precision=precision, device=device, calibration=calibration, **options
    )
