"""OpenVINO backend: the stage ONNX graphs compiled for the CPU (or an Intel GPU) plugin.

The inference precision is always set explicitly: on CPUs with avx512_bf16 OpenVINO otherwise
silently runs bf16, which no longer matches the fp32 reference. Latency mode, because rtseg
segments one frame at a time. Each call writes into freshly allocated NumPy arrays bound as
the request's output tensors, so results are the caller's own memory and are never copied.
An infer request runs one inference at a time, so each calling thread gets its own request
(a server's workers share one compiled model).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from .. import process
from ..errors import BackendUnavailableError, ConfigError, EngineBuildError
from ..models.base import StageSpec
from ..models.checkpoint import WeightsMeta
from .backends import BACKEND_SPECS
from .base import Array, Engine, EngineInfo, Features
from .onnx_export import IMAGE, LABELS, LOGITS, check_image_input, unloadable_graph
from .onnx_rewrite import rewrite_pool_indices

# rtseg precision -> INFERENCE_PRECISION_HINT; int8 runs a QDQ graph with the f32 hint. Which
# precisions openvino runs is its registry entry's (backends.BACKEND_SPECS): this only translates.
HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
DEVICES = {"cpu": "CPU", "gpu": "GPU"}


_IMPORT = threading.Lock()


def import_openvino() -> Any:
    """The openvino module, imported without OpenVINO's usage telemetry.

    ``import openvino`` imports its model converter, whose import sends a telemetry event: it
    starts a child process (under the 'spawn' start method one that re-runs the host's __main__),
    makes a Google Analytics request, writes ~/intel and leaves a thread behind, all inside the
    host (robot) process. OpenVINO falls back to its no-op stub when ``openvino_telemetry`` cannot
    be imported, so it is made unimportable for the length of the import only; a host that
    imported openvino (or openvino_telemetry) itself keeps what it chose.
    """
    module = sys.modules.get("openvino")
    if module is not None:
        return module
    try:
        with _IMPORT:
            if "openvino" in sys.modules or "openvino_telemetry" in sys.modules:
                import openvino
            else:
                sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
                try:
                    import openvino
                finally:
                    if "openvino_telemetry" in sys.modules and sys.modules["openvino_telemetry"] is None:
                        del sys.modules["openvino_telemetry"]
    except ImportError:
        raise BackendUnavailableError(
            "the openvino backend needs the openvino package: pip install openvino "
            '(or pip install "rtseg[openvino]")'
        ) from None
    return openvino


_cores: dict[int, Any] = {}  # process id -> its Core


def shared_core() -> Any:
    """The process's one OpenVINO Core, kept until exit; OpenVINO recommends one per application.

    Each Core loads its own CPU plugin, which points the calling thread's alternate signal stack at
    a stack of its own and puts back the previous one when that Core is destroyed. Destroyed in
    the order they were made (engines closed first to last, auto's candidates), the last put back
    a freed stack: the next signal handled on the main thread (SIGTERM, Ctrl-C: Python's handlers
    run on that stack) was a segmentation fault.

    A forked child makes its own: the parent's Core, whose executor threads fork did not copy,
    hung the child when destroyed at its exit, so the child leaves it alone (rtseg.process).
    """
    core = _cores.get(process.current)
    if core is None:
        core = _cores[process.current] = import_openvino().Core()
        process.track(core, weak=False)
    return core


def check_target(core: Any, device: str, precision: str) -> str:
    """The OpenVINO device name for rtseg's ``device``; refused before any export when unusable."""
    allowed = BACKEND_SPECS["openvino"].precisions
    if precision not in allowed:
        raise ConfigError(f"openvino precision must be one of {', '.join(allowed)}, got {precision!r}")
    if device not in DEVICES:
        raise ConfigError(
            f"openvino device must be one of {', '.join(DEVICES)} (CPU or an Intel GPU), got {device!r}"
        )
    target = DEVICES[device]
    if target not in core.available_devices:
        raise BackendUnavailableError(
            f"openvino device {target} is not available on this machine (it has "
            f"{', '.join(core.available_devices)}); install the Intel GPU driver (intel-opencl-icd) "
            "or use device='cpu'"
        )
    return target


def library_version() -> str:
    return f"ov{import_openvino().get_version().split('-')[0]}"


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous().numpy()
    raise TypeError(f"expected a NumPy array or torch tensor, got {type(value).__name__}")


def _name(port: Any, declared: set[str]) -> str:
    names = port.get_names() & declared
    if len(names) != 1:
        raise EngineBuildError(f"openvino port names {port.get_names()} match no graph I/O name ({declared})")
    return next(iter(names))


class _Stage:
    """One compiled stage and, per calling thread, an infer request with its scratch outputs.

    ``outputs`` keeps only those graph outputs: the head compiled for labels alone does not write
    the full-resolution logits (ESPNet 480x360: 13.8 MB a frame, 0.5 ms of a 6.6 ms head).
    """

    def __init__(
        self,
        core: Any,
        path: Path,
        device: str,
        config: Mapping[str, str],
        outputs: tuple[str, ...] | None = None,
    ) -> None:
        ov = import_openvino()
        # A port can carry several tensor names; use the graph's own I/O names.
        try:
            proto = onnx.load(str(path), load_external_data=False)
            graph = proto.graph
            # ENet's pooling indices: the CPU plugin runs MaxPool's second output through its
            # reference implementation, 5x slower than the whole rest of the stage. The rewrite
            # counts positions in floats, exact in f32 only: under an f16 hint the positions past
            # 2048 in a plane would round, so lower precisions keep the exact, slow op.
            exact = config.get("INFERENCE_PRECISION_HINT") == "f32"
            native, rewrites = rewrite_pool_indices(proto, strict=False) if exact else (proto, [])
            model = core.read_model(native.SerializeToString() if rewrites else str(path))
        except Exception as exc:  # protobuf's DecodeError, OpenVINO's RuntimeError, ...
            raise unloadable_graph(Path(path), "openvino", exc) from None
        declared = {v.name for v in (*graph.input, *graph.output)}
        if outputs is not None:
            results = {_name(o, declared): o.get_node() for o in model.outputs}
            model = ov.Model([results[n] for n in outputs], model.get_parameters(), model.get_friendly_name())
        if LABELS in declared:
            argmax_by_comparison(model)
        compiled = core.compile_model(model, device, dict(config))
        self.compiled = compiled
        self._local = threading.local()
        self.inputs = tuple(_name(i, declared) for i in compiled.inputs)
        # As the graph declares them (-1: a dimension without a fixed size)
        self.input_shapes = {
            v.name: tuple(
                d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim
            )
            for v in graph.input
        }
        self.outputs = tuple(_name(o, declared) for o in compiled.outputs)
        self._ports = {name: i for i, name in enumerate(self.outputs)}
        self._specs = {
            name: (tuple(o.get_shape()), np.dtype(o.get_element_type().to_dtype()))
            for name, o in zip(self.outputs, compiled.outputs, strict=True)
        }
        self._ov = ov

    def _request(self) -> tuple[Any, dict[str, np.ndarray]]:
        local = self._local
        if not hasattr(local, "request"):
            local.request = self.compiled.create_infer_request()
            local.scratch = {name: np.empty(shape, dtype) for name, (shape, dtype) in self._specs.items()}
        return local.request, local.scratch

    def __call__(
        self, feed: Mapping[str, np.ndarray], names: tuple[str, ...] | None = None
    ) -> list[np.ndarray]:
        wanted = names or self.outputs
        request, scratch = self._request()
        result: dict[str, np.ndarray] = {}
        for name in self.outputs:
            if name in wanted:
                shape, dtype = self._specs[name]
                array = result[name] = np.empty(shape, dtype)
            else:
                array = scratch[name]  # computed anyway; kept alive here, never handed out
            # The request keeps only a pointer: the array must outlive the next infer().
            request.set_output_tensor(self._ports[name], self._ov.Tensor(array, shared_memory=True))
        # infer() also returns the outputs, copied unless shared: they are already in our arrays,
        # and that copy was every output again each call (ESPNet's low stage: 6 MB a frame).
        request.infer(dict(feed), share_inputs=True, share_outputs=True)
        return [result[n] for n in wanted]


def _first_maximum(values: Any, axis: int, rank: int, n: int) -> Any:
    """The index of the first maximum of ``values`` along ``axis`` (float32, dimension kept),
    from elementwise ops and two reductions."""
    ops = import_openvino().opset13
    where = np.array([axis], np.int64)
    shape = [n if d == axis else 1 for d in range(rank)]
    index = ops.constant(np.arange(n, dtype=np.float32).reshape(shape))
    none = ops.constant(np.float32(n))
    is_max = ops.equal(values, ops.reduce_max(values, where, True))
    first = ops.reduce_min(ops.select(is_max, index, none), where, True)
    # Nothing equals the maximum where every value is -inf (the CPU plugin's ReduceMax starts
    # from -FLT_MAX; PyTorch answers 0) or where a NaN made it NaN: 0, a label in range.
    return ops.select(ops.less(first, none), first, ops.constant(np.float32(0)))


def argmax_by_comparison(model: Any) -> int:
    """Rewrite each argmax (a k=1 max ``TopK`` whose values nobody reads) into elementwise ops
    and reductions (``_first_maximum``), in place. Returns how many were rewritten.

    OpenVINO's CPU TopK over the channel axis of the head's full-resolution logits takes 3.0 ms
    of a 6.2 ms head (ESPNet, 11 classes, 480x360); with the rewrite the head takes 4.1 ms (29 ->
    24 ms at 1024x512), with the same labels, ties and infinities included. A pixel with a NaN
    logit gets some label in range, as with TopK (PyTorch's is the NaN's). Not in the shared ONNX
    graph: ONNX Runtime's ArgMax is the faster of the two there (5.3 against 7.5 ms for the head).
    """
    ops = import_openvino().opset13
    rewritten = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "TopK" or node.output(0).get_target_inputs():
            continue
        attrs = node.get_attributes()
        k = node.input_value(1).get_node()
        shape = node.get_input_partial_shape(0)
        if (
            attrs.get("mode") != "max"
            or k.get_type_name() != "Constant"
            or k.get_data().size != 1
            or int(k.get_data().reshape(-1)[0]) != 1
            or not shape.rank.is_static
        ):
            continue
        rank = shape.rank.get_length()
        axis = int(attrs["axis"]) % rank
        # Channel indices are exact in float32 below 2**24.
        if not shape[axis].is_static or shape[axis].get_length() >= 2**24:
            continue
        labels = _first_maximum(node.input_value(0), axis, rank, shape[axis].get_length())
        result = ops.convert(labels, node.get_output_element_type(1))
        for target in node.output(1).get_target_inputs():
            target.replace_source_output(result.output(0))
        rewritten += 1
    return rewritten


def _threads(compiled: Any) -> int | None:
    """The threads OpenVINO chose (or was given): its default follows the cores, not our flag."""
    try:
        return int(compiled.get_property("INFERENCE_NUM_THREADS"))
    except Exception:
        return None


class OpenVinoEngine(Engine):
    """Runs the low/deep/head graphs with OpenVINO; features are NumPy arrays between stages."""

    batch = BACKEND_SPECS["openvino"].batch  # graphs exported for one image

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
        notes: tuple[str, ...] = (),
    ) -> None:
        ov = import_openvino()
        core = shared_core()
        target = check_target(core, device, precision)
        config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        self.meta = meta
        self.stage_spec = stage_spec
        self.head_low_inputs = head_low_inputs
        self._stages = {stage: _Stage(core, path, target, config) for stage, path in files.items()}
        check_image_input(Path(files["low"]), self._stages["low"].input_shapes.get(IMAGE, ()), input_size)
        # The head without its logits output, for every call that wants labels alone.
        self._stages["head:labels"] = _Stage(core, files["head"], target, config, outputs=(LABELS,))
        self.info = EngineInfo(
            model=meta.model,
            backend="openvino",
            precision=precision,
            device=device,
            input_size=tuple(input_size),  # type: ignore[arg-type]
            library=f"openvino {ov.get_version().split('-')[0]}",
            artifacts=tuple(str(p) for p in files.values()),
            notes=(f"INFERENCE_PRECISION_HINT {HINTS[precision]}", "PERFORMANCE_HINT LATENCY", *notes),
            threads=_threads(self._stages["low"].compiled),
        )

    def run_low(self, image: Array) -> Features:
        self._check_open()
        self.check_image(image)
        x = _numpy(image)
        if x.ndim == 3:
            x = x[None]
        stage = self._stages["low"]
        return dict(zip(stage.outputs, stage({IMAGE: x}), strict=True))

    def run_deep(self, low: Features) -> Features:
        self._check_open()
        stage = self._stages["deep"]
        return dict(zip(stage.outputs, stage({n: _numpy(low[n]) for n in stage.inputs}), strict=True))

    def run_head(self, low: Features, deep: Features, *, logits: bool = False) -> Any:
        self._check_open()
        stage = self._stages["head" if logits else "head:labels"]
        feed = {n: _numpy(low[n] if n in low else deep[n]) for n in stage.inputs}
        if logits:
            labels, out = stage(feed, (LABELS, LOGITS))
            return labels, out
        (labels,) = stage(feed, (LABELS,))
        return labels

    def _release(self) -> None:
        self._stages.clear()
