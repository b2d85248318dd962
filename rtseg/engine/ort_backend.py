"""ONNX Runtime backend: one session per stage; features stay NumPy arrays between stages.

Threads come from the physical core count (hyper-threads slow convolutions down), the graph
optimiser runs at its highest level, and execution is sequential (the stage graphs are chains;
parallel execution only adds scheduling). On GPU machines the TensorRT and CUDA execution
providers are used in that order when ``onnxruntime-gpu`` provides them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BackendUnavailableError, ConfigError
from ..models.base import StageSpec
from ..models.checkpoint import WeightsMeta
from .backends import BACKEND_SPECS
from .base import Array, Engine, EngineInfo, Features, cuda_device_index
from .onnx_export import IMAGE, LABELS, LOGITS, check_image_input, unloadable_graph

log = logging.getLogger(__name__)

# onnxruntime's exceptions for a model file it cannot read (their messages say "Load model from")
_LOAD_ERRORS = ("InvalidProtobuf", "InvalidGraph", "NoSuchFile")

_NUMPY_TYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(bool)": np.dtype(np.bool_),
}


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError(
            "the onnxruntime backend needs the onnxruntime package: pip install onnxruntime "
            "(or onnxruntime-gpu on CUDA machines)"
        ) from None
    return onnxruntime


def library_version() -> str:
    return f"ort{import_onnxruntime().__version__}"


def default_threads() -> int:
    """A thread per physical core this process may use (none per hyper-thread: they slow
    convolutions down)."""
    from ..hardware import usable_cores

    return usable_cores()


def providers_for(device: str, precision: str, cache_dir: Path | None = None) -> list[Any]:
    """Execution providers in preference order for ``device``; raises when the device has none."""
    ort = import_onnxruntime()
    available = set(ort.get_available_providers())
    if device == "cpu":
        if precision == "fp16":
            raise ConfigError(
                "onnxruntime fp16 needs the TensorRT execution provider on a CUDA device "
                "(device='cuda'); on CPU use fp32 or int8"
            )
        return ["CPUExecutionProvider"]
    index = cuda_device_index(device)
    if index is None:
        raise ConfigError(f"onnxruntime device must be 'cpu' or 'cuda[:N]', got {device!r}")
    chosen: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        options: dict[str, Any] = {
            "device_id": index,
            "trt_fp16_enable": precision == "fp16",
            "trt_int8_enable": precision == "int8",
        }
        if cache_dir is not None:
            options.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=str(cache_dir),
                trt_timing_cache_enable=True,
            )
        chosen.append(("TensorrtExecutionProvider", options))
    elif precision == "fp16":
        raise ConfigError(
            "onnxruntime fp16 runs through the TensorRT execution provider, which this onnxruntime "
            f"build lacks (providers: {sorted(available)}); use backend 'tensorrt' or 'torch' for fp16"
        )
    if "CUDAExecutionProvider" in available:
        chosen.append(("CUDAExecutionProvider", {"device_id": index}))
    if not chosen:
        raise BackendUnavailableError(
            f"onnxruntime on {device}: this onnxruntime build has no CUDA or TensorRT execution "
            f"provider (it has {sorted(available)}); pip install onnxruntime-gpu"
        )
    return [*chosen, "CPUExecutionProvider"]


# Worker threads that spin after a run keep their cores busy for the next thing to run: here the
# next stage's session (each of the three sessions has its own pool), the change score, the flow,
# the overlay thread or another engine. Measured on the 2-core reference machine, ESPNet 480x360:
# a full pass 186 ms with spinning, 97 ms without; an OpenVINO pass right after an ONNX Runtime
# one 139 ms against 92 ms alone (docs/scheduling.md, bench/engines.md).
NO_SPINNING = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def session_options(threads: int | None = None) -> Any:
    ort = import_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    for key, value in NO_SPINNING.items():
        so.add_session_config_entry(key, value)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return so


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    raise TypeError(f"expected a NumPy array or torch tensor, got {type(value).__name__}")


class OrtEngine(Engine):
    """Runs the low/deep/head ONNX graphs, one InferenceSession each."""

    batch = BACKEND_SPECS["onnxruntime"].batch  # graphs exported for one image

    def __init__(
        self,
        files: Mapping[str, Path],
        *,
        meta: WeightsMeta,
        stage_spec: StageSpec,
        head_low_inputs: tuple[str, ...],
        input_size: tuple[int, int],
        precision: str = "fp32",
        device: str = "cpu",
        threads: int | None = None,
        io_binding: bool | None = None,
        provider_cache: Path | None = None,
        notes: tuple[str, ...] = (),
    ) -> None:
        allowed = BACKEND_SPECS["onnxruntime"].precisions
        if precision not in allowed:
            raise ConfigError(f"onnxruntime precision must be one of {', '.join(allowed)}, got {precision!r}")
        ort = import_onnxruntime()
        providers = providers_for(device, precision, provider_cache)
        options = session_options(threads)
        self.meta = meta
        self.stage_spec = stage_spec
        self.head_low_inputs = head_low_inputs
        self._sessions = {}
        for stage, path in files.items():
            try:
                self._sessions[stage] = ort.InferenceSession(
                    str(path), sess_options=options, providers=providers
                )
            except Exception as exc:  # onnxruntime's own types: InvalidProtobuf, InvalidArgument, ...
                if "Load model from" not in str(exc) and type(exc).__name__ not in _LOAD_ERRORS:
                    raise  # not about the file (a provider, the options): as onnxruntime said it
                raise unloadable_graph(Path(path), "onnxruntime", exc) from None
        image = {i.name: i for i in self._sessions["low"].get_inputs()}.get(IMAGE)
        check_image_input(Path(files["low"]), tuple(image.shape) if image is not None else (), input_size)
        self._low_names = tuple(o.name for o in self._sessions["low"].get_outputs())
        self._deep_inputs = tuple(i.name for i in self._sessions["deep"].get_inputs())
        self._deep_names = tuple(o.name for o in self._sessions["deep"].get_outputs())
        self._head_inputs = tuple(i.name for i in self._sessions["head"].get_inputs())
        self._output_names = {s: tuple(o.name for o in x.get_outputs()) for s, x in self._sessions.items()}
        self._output_specs = {
            s: {o.name: (tuple(o.shape), _NUMPY_TYPES[o.type]) for o in x.get_outputs()}
            for s, x in self._sessions.items()
        }
        if io_binding is None:
            io_binding = device == "cpu"
        elif io_binding and device != "cpu":
            raise ConfigError("onnxruntime io_binding is implemented for device='cpu' only")
        self._io_binding = io_binding
        used = self._sessions["low"].get_providers()[0]
        self.info = EngineInfo(
            model=meta.model,
            backend="onnxruntime",
            precision=precision,
            device=device,
            input_size=tuple(input_size),  # type: ignore[arg-type]
            library=f"onnxruntime {ort.__version__}",
            artifacts=tuple(str(p) for p in files.values()),
            notes=(
                f"provider {used}",
                f"threads {options.intra_op_num_threads}",
                "no spinning",
                *(["io binding"] if io_binding else []),
                *notes,
            ),
            threads=options.intra_op_num_threads,
        )

    def _image(self, image: Array) -> np.ndarray:
        self.check_image(image)
        x = _numpy(image)
        if x.ndim == 3:
            x = x[None]
        return x

    def _run(self, stage: str, feed: Mapping[str, np.ndarray], outputs: tuple[str, ...] | None) -> list:
        self._check_open()
        session = self._sessions[stage]
        if not self._io_binding:
            return session.run(list(outputs) if outputs else None, dict(feed))
        # Bind a fresh array per output: ORT writes into memory the caller then owns, instead of
        # copying its own buffer out (saves ~2 ms of 13 ms on ESPNet's low stage at 480x360).
        binding = session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        result = []
        for name in outputs or self._output_names[stage]:
            shape, dtype = self._output_specs[stage][name]
            array = np.empty(shape, dtype)
            binding.bind_output(name, "cpu", 0, dtype, list(shape), array.ctypes.data)
            result.append(array)
        session.run_with_iobinding(binding)
        return result

    def run_low(self, image: Array) -> Features:
        return dict(zip(self._low_names, self._run("low", {IMAGE: self._image(image)}, None), strict=True))

    def run_deep(self, low: Features) -> Features:
        feed = {n: _numpy(low[n]) for n in self._deep_inputs}
        return dict(zip(self._deep_names, self._run("deep", feed, None), strict=True))

    def run_head(self, low: Features, deep: Features, *, logits: bool = False) -> Any:
        feed = {n: _numpy(low[n] if n in low else deep[n]) for n in self._head_inputs}
        if logits:
            labels, out = self._run("head", feed, (LABELS, LOGITS))
            return labels, out
        (labels,) = self._run("head", feed, (LABELS,))
        return labels

    def _release(self) -> None:
        self._sessions.clear()
