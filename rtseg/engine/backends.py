"""The one flat backend registry: each inference backend's facts as data, plus its loader.

``load()``, ``auto``, the CLI and the benchmark report read what a backend takes (precisions,
keyword options), where it runs and how many images a call takes from here instead of keeping
their own lists. Loaders import their backend module on call: importing rtseg (or this module)
imports no ONNX Runtime, OpenVINO, TensorRT or torch2trt.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..models.base import StagedSegmenter
    from .base import Engine
    from .cache import ArtifactCache
    from .calibration import CalibrationList

# Every precision some backend runs, in the order help texts and messages list them.
ALL_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# Values of two loader options the CLI offers as choices (here, not in the modules that use them,
# since those import onnx).
EXPORTERS = ("auto", "torchscript", "dynamo")  # the onnx backends' ``exporter``: how ONNX is made
INT8_MODES = ("qdq", "calibrator")  # tensorrt int8: an explicit QDQ graph or implicit calibration

# A loader takes an already-built network and what load() checked: (net, *, size, precision,
# device, cache, calibration, wh, **options) -> Engine.
Loader = Callable[..., "Engine"]


@dataclass(frozen=True)
class BackendSpec:
    """One registry entry: what a backend runs and takes, and the loader that builds its engine."""

    name: str
    precisions: tuple[str, ...]
    # The keyword options its loader takes: load() refuses others and auto gives each candidate
    # only its own (``exporter`` means nothing to torch, ``channels_last`` nothing to ONNX Runtime).
    options: tuple[str, ...]
    loader: Loader
    # Runs only on an NVIDIA GPU: a device left unset means the first CUDA device there.
    cuda_only: bool = False
    # The one batch size its engines take (compiled graphs have shapes fixed at export); None: any N.
    batch: int | None = 1
    # Runs its graphs with TensorRT (the benchmark report's "tensorrt" column).
    tensorrt: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"BackendSpec.name must be a non-empty string, got {self.name!r}")
        for field_name, values in (("precisions", self.precisions), ("options", self.options)):
            if not isinstance(values, tuple) or not all(isinstance(v, str) for v in values):
                raise ConfigError(
                    f"BackendSpec.{field_name} of {self.name} must be a tuple of strings, got {values!r}"
                )
            if len(set(values)) != len(values):
                raise ConfigError(f"BackendSpec.{field_name} of {self.name} lists a value twice: {values!r}")
        unknown = [p for p in self.precisions if p not in ALL_PRECISIONS]
        if not self.precisions or unknown:
            raise ConfigError(
                f"BackendSpec.precisions of {self.name} must be some of {', '.join(ALL_PRECISIONS)}, "
                f"got {self.precisions!r}"
            )
        if not callable(self.loader):
            raise ConfigError(f"BackendSpec.loader of {self.name} must be callable, got {self.loader!r}")
        if self.batch is not None and (
            isinstance(self.batch, bool) or not isinstance(self.batch, numbers.Integral) or self.batch <= 0
        ):
            raise ConfigError(
                f"BackendSpec.batch of {self.name} must be a positive int or None, got {self.batch!r}"
            )
        for field_name in ("cuda_only", "tensorrt"):
            value = getattr(self, field_name)
            if not isinstance(value, bool):
                raise ConfigError(f"BackendSpec.{field_name} of {self.name} must be a bool, got {value!r}")


def _load_torch(
    net: StagedSegmenter,
    *,
    size: tuple[int, int],
    precision: str,
    device: str,
    cache: ArtifactCache,
    calibration: CalibrationList | None = None,
    wh: str | None = None,
    **options: Any,
) -> Engine:
    del cache, wh  # the torch engine runs its own copy of the network: nothing is cached
    if calibration is not None:
        raise ConfigError("calibration applies to int8 engines; the torch backend has no int8")
    from .torch_backend import TorchEngine

    return TorchEngine(net, input_size=size, precision=precision, device=device, **options)


def _load_onnx(net: StagedSegmenter, *, backend: str, **kwargs: Any) -> Engine:
    from .onnx_engines import load_onnx_engine

    return load_onnx_engine(net, backend=backend, **kwargs)


def _load_tensorrt(net: StagedSegmenter, **kwargs: Any) -> Engine:
    from .tensorrt_backend import load_tensorrt

    return load_tensorrt(net, **kwargs)


def _load_torch2trt(net: StagedSegmenter, *, wh: str | None = None, **kwargs: Any) -> Engine:
    del wh  # converts the network itself, no ONNX export keyed by the weights
    from .torch2trt_backend import load_torch2trt

    return load_torch2trt(net, **kwargs)


_BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec(
        name="torch",
        precisions=("fp32", "fp16"),
        options=("channels_last", "compile"),
        loader=_load_torch,
        batch=None,  # the reference runs any NxHxWx3
    ),
    BackendSpec(
        name="onnxruntime",
        precisions=("fp32", "fp16", "int8"),
        options=("threads", "io_binding", "exporter"),
        loader=functools.partial(_load_onnx, backend="onnxruntime"),
    ),
    BackendSpec(
        name="openvino",
        precisions=("fp32", "fp16", "bf16", "int8"),
        options=("threads", "exporter"),
        loader=functools.partial(_load_onnx, backend="openvino"),
    ),
    BackendSpec(
        name="tensorrt",
        precisions=("fp32", "fp16", "int8"),
        options=("workspace_gb", "int8_mode", "calibration_dir"),
        loader=_load_tensorrt,
        cuda_only=True,
        tensorrt=True,
    ),
    BackendSpec(
        name="torch2trt",
        precisions=("fp32", "fp16", "int8"),
        options=("workspace_gb",),
        loader=_load_torch2trt,
        cuda_only=True,
        tensorrt=True,
    ),
)

BACKEND_SPECS: Mapping[str, BackendSpec] = MappingProxyType({spec.name: spec for spec in _BACKENDS})
if len(BACKEND_SPECS) != len(_BACKENDS):
    raise ConfigError(f"two backend specs share a name: {[spec.name for spec in _BACKENDS]}")
if {p for spec in _BACKENDS for p in spec.precisions} != set(ALL_PRECISIONS):
    raise ConfigError(f"ALL_PRECISIONS {ALL_PRECISIONS} names a precision no backend runs")

# The names the rest of rtseg (and its users) read, derived from the registry.
BACKENDS = ("auto", *BACKEND_SPECS)  # what load(backend=) takes; "auto" times the others
PRECISIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {n: s.precisions for n, s in BACKEND_SPECS.items()}
)
BACKEND_OPTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {n: s.options for n, s in BACKEND_SPECS.items()}
)
CUDA_ONLY = tuple(n for n, s in BACKEND_SPECS.items() if s.cuda_only)


def default_device(backend: str) -> str:
    """The device an unset ``device`` means for ``backend``: 'cuda' for TensorRT and torch2trt,
    which run nowhere else, 'cpu' for the rest (auto included)."""
    return "cuda" if backend in CUDA_ONLY else "cpu"


def uses_tensorrt(backend: str) -> bool:
    """Whether ``backend`` (any string: results files name it) runs its graphs with TensorRT."""
    spec = BACKEND_SPECS.get(backend)
    return spec is not None and spec.tensorrt
