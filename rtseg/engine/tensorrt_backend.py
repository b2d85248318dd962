"""TensorRT backend (TensorRT 10 Python API): one serialised plan per stage, run on a CUDA stream.

Build: the stage ONNX (fp32, or the symmetric QDQ graph for explicit int8) is rewritten where
TensorRT's parser needs it (``onnx_rewrite``), parsed with ``OnnxParser`` into a network from
``create_network(0)`` (explicit batch is the only mode in TensorRT 10), and built with FP16/INT8
flags, a workspace memory-pool limit, a fixed optimisation profile for the input size and a
timing cache that is saved next to the engines and shared by later builds. Implicit int8
calibration (``int8_mode="calibrator"``) uses ``calibration.EntropyCalibrator`` wrapped in
``IInt8EntropyCalibrator2``; its cache goes to calibration/cache/.

The per-frame head plan outputs only the labels; a second head plan with the logits is built
and loaded on the first ``run(logits=True)`` (eval, export's parity check).

Run: features between stages stay torch CUDA tensors (allocated fresh per call, so a cached deep
result is never overwritten); only the labels are copied to the host. The plans run on the
engine's own CUDA stream (TensorRT warns that ``execute_async_v3`` on the default stream costs
extra synchronisation), ordered after the caller's current stream and before its later work.

TensorRT reports most failures (an unparsable graph, out of memory while building, a plan from
another TensorRT version or GPU) only through its logger and a None result; one process-wide
logger forwards its messages to rtseg's log and puts the errors into the raised ``rtseg`` error.
A cached plan that passes its record (TensorRT version, GPU kind, checksum) yet does not
deserialise is rebuilt once, with its siblings (``open_or_rebuild``).

This path has not yet run on a GPU: it is written against the TensorRT 10 API documentation,
and only the parts that need no GPU (graph rewrites, QDQ export, artifact names, the
calibrator's batching and cache I/O) are tested on CPU.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import torch

from ..atomic import atomic_write_bytes
from ..errors import BackendUnavailableError, ConfigError, EngineBuildError
from ..models.base import StagedSegmenter
from .backends import BACKEND_SPECS, INT8_MODES
from .base import Array, Engine, EngineInfo, Features, cuda_device_index
from .cache import ArtifactCache, ArtifactKey, CacheUnwritableError, digest, file_lock
from .calibration import CalibrationList, EntropyCalibrator, default_calibration_dir, stage_feeds
from .onnx_export import IMAGE, LABELS, LOGITS, STAGES, OnnxStages, check_image_input, ensure_onnx, graph_io
from .onnx_rewrite import EXACT_MARK, for_tensorrt
from .torch_backend import from_numpy

log = logging.getLogger(__name__)

# The plans built at load: the per-frame head keeps only the labels (as OpenVINO's does), so no
# full-resolution logits tensor is bound, written and kept per frame. ``head_logits`` (labels and
# logits, for ``run(logits=True)``: eval, export's parity check) is built on its first use.
PLAN_STAGES = STAGES
LOGITS_STAGE = "head_logits"
PLAN_OUTPUTS = {"head": [LABELS], LOGITS_STAGE: [LABELS, LOGITS]}  # other stages: every output
Opened = TypeVar("Opened")  # what open_or_rebuild's caller makes of the plans (an engine)
INSTALL = 'pip install "rtseg[tensorrt]" (TensorRT 10) next to a CUDA build of torch'


def _trt_problem() -> tuple[Any, str | None]:
    """The tensorrt module, or None and what the backend needs instead ("TensorRT", ...)."""
    try:
        import tensorrt
    except ImportError:
        return None, "TensorRT"
    if not hasattr(tensorrt, "__version__"):
        # An emptied or partly removed package still imports, as a namespace package with nothing in it.
        where = ", ".join(getattr(tensorrt, "__path__", None) or ()) or getattr(tensorrt, "__file__", "?")
        return None, (
            f"a working TensorRT (the tensorrt package at {where} has no __version__: a broken install, "
            "empty or partly removed; reinstall it)"
        )
    if str(tensorrt.__version__).split(".")[0] != "10":
        return None, f"TensorRT 10 (found {tensorrt.__version__})"
    return tensorrt, None


def import_tensorrt() -> Any:
    """The tensorrt module, or BackendUnavailableError saying what is missing and how to install
    it. Public: the torch2trt backend needs TensorRT too and names it the same way."""
    tensorrt, problem = _trt_problem()
    if problem is not None:
        raise BackendUnavailableError(f"the tensorrt backend needs {problem}: {INSTALL}")
    return tensorrt


_recovering = threading.local()


@contextmanager
def recoverable_errors() -> Iterator[None]:
    """TensorRT logs an ERROR for a timing cache it cannot read, and goes on; so does rtseg, with a
    warning of its own. Inside this block, this thread's TensorRT errors are such recoverable ones:
    logged at debug level and not captured as a build's errors."""
    _recovering.active = True
    try:
        yield
    finally:
        _recovering.active = False


@functools.cache
def trt_logger(trt: Any) -> Any:
    """The process-wide ``trt.ILogger``: TensorRT keeps using the logger of the first builder or
    runtime, and a logger must outlive every object created with it. Errors and warnings go to
    rtseg's log; ``capture()`` collects the error messages logged while it is open. TensorRT
    logs a call's errors from the thread that made the call, so each capture takes its own
    thread's errors and two builds on two threads do not get each other's; an error logged from
    a thread that captures nothing (a worker of TensorRT's own) goes to every open capture."""
    severity = trt.ILogger.Severity

    class _Logger(trt.ILogger):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self._lock = threading.Lock()
            self._sinks: dict[int, list[list[str]]] = {}  # by thread ident

        def log(self, level: Any, msg: str) -> None:
            if level == severity.ERROR and getattr(_recovering, "active", False):
                log.debug("TensorRT (recovered from): %s", msg)
            elif level in (severity.INTERNAL_ERROR, severity.ERROR):
                log.error("TensorRT: %s", msg)
                with self._lock:
                    own = self._sinks.get(threading.get_ident())
                    for sink in own if own else [s for sinks in self._sinks.values() for s in sinks]:
                        sink.append(str(msg))
            elif level == severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

        @contextmanager
        def capture(self) -> Iterator[list[str]]:
            sink: list[str] = []
            thread = threading.get_ident()
            with self._lock:
                self._sinks.setdefault(thread, []).append(sink)
            try:
                yield sink
            finally:
                with self._lock:
                    sinks = self._sinks[thread]
                    sinks.remove(sink)
                    if not sinks:
                        del self._sinks[thread]

    return _Logger()


def _said(errors: list[str]) -> str:
    return f": {'; '.join(errors)}" if errors else " (TensorRT logged no error)"


OUT_OF_MEMORY = re.compile(r"out of memory|outofmemory|insufficient memory|cudaErrorMemoryAllocation", re.I)


def cuda_index(device: str) -> int:
    index = cuda_device_index(device)
    if index is None:
        raise ConfigError(f"the tensorrt backend runs on 'cuda' or 'cuda:N', got device {device!r}")
    return index


def _no_cuda() -> str:
    return f"a CUDA build of torch (this is torch {torch.__version__}, CUDA available: no)"


def require_cuda(device: str) -> int:
    index = cuda_index(device)
    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"the tensorrt backend needs an NVIDIA GPU and {_no_cuda()}")
    if index >= torch.cuda.device_count():
        raise BackendUnavailableError(f"{device}: only {torch.cuda.device_count()} CUDA devices present")
    return index


def require_tensorrt(device: str) -> tuple[Any, int]:
    """TensorRT 10 and the index of CUDA device ``device``. A malformed device is refused first;
    a machine without a GPU or TensorRT gets one error naming each that is missing, so installing
    TensorRT on a machine without CUDA does not just lead to a second error."""
    cuda_index(device)
    trt, problem = _trt_problem()
    if problem is not None:
        gpu = "" if torch.cuda.is_available() else f"an NVIDIA GPU, {_no_cuda()} and "
        raise BackendUnavailableError(f"the tensorrt backend needs {gpu}{problem}: {INSTALL}")
    return trt, require_cuda(device)


def device_tag(index: int) -> str:
    """GPU model and compute capability: a plan only runs on the GPU kind it was built for.

    No '-' inside: it separates the fields of artifact names (``ArtifactKey.stem`` would turn it
    into '_', and the timing cache, named from the raw tag, would then be spelt otherwise).
    """
    name = re.sub(r"[^A-Za-z0-9]+", "", torch.cuda.get_device_name(index).replace("NVIDIA", ""))
    major, minor = torch.cuda.get_device_capability(index)
    return f"{name.lower()}_sm{major}{minor}"


def plan_key(
    source: ArtifactKey,
    *,
    precision: str,
    device: str,
    trt_version: str,
    variant: str = "",
    source_sha256: Mapping[str, str] | None = None,
) -> ArtifactKey:
    """The plan's cache key: the ONNX it was built from, plus precision, GPU and TensorRT version.

    The name keeps the source's model, weights, size and variant; ``source`` digests the rest of
    the source key (its exporter's torch or ONNX Runtime version, its own ``source``), the source
    graphs' SHA-256 and which outputs each plan keeps, so a plan is never reused from another
    export or quantisation."""
    origin = {"key": source.to_dict(), "sha256": dict(source_sha256 or {}), "outputs": PLAN_OUTPUTS}
    return ArtifactKey(
        model=source.model,
        weights=source.weights,
        input_size=source.input_size,
        precision=precision,
        backend="tensorrt",
        device=device,
        library=f"trt{trt_version}",
        variant=variant,
        source=digest(origin),
    )


def timing_cache_path(cache: ArtifactCache, device: str, trt_version: str) -> Path:
    """One timing cache per GPU kind and TensorRT version, shared by every model's builds."""
    return cache.directory / f"tensorrt-{device}-trt{trt_version}.timing.cache"


def as_trt_calibrator(calibrator: EntropyCalibrator) -> Any:
    """Wrap rtseg's calibrator in TensorRT's IInt8EntropyCalibrator2 base class (deprecated since
    TensorRT 10.1 in favour of explicit QDQ quantisation, still present in 10.x).

    TensorRT's bindings catch an exception raised in a callback, print "Exception caught in
    get_batch()" and fail the build; the wrapper keeps the first exception in ``.error`` (and ends
    calibration) so that ``build_plan`` raises it instead of a bare build failure.
    """
    trt = import_tensorrt()

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.error: BaseException | None = None

        def _call(self, method: Callable[..., Any], *args: Any, failed: Any = None) -> Any:
            if self.error is not None:
                return failed
            try:
                return method(*args)
            except Exception as exc:  # re-raised by build_plan
                self.error = exc
                return failed

        def get_batch_size(self) -> int:
            return self._call(calibrator.get_batch_size, failed=1)

        def get_batch(self, names: list[str]) -> list[int] | None:
            return self._call(calibrator.get_batch, list(names))

        def read_calibration_cache(self) -> bytes | None:
            return self._call(calibrator.read_calibration_cache)

        def write_calibration_cache(self, cache: Any) -> None:
            self._call(calibrator.write_calibration_cache, cache)

    return _Calibrator()


def _start_timing_cache(config: Any, data: bytes | None, name: str) -> None:
    """Attach a timing cache made from ``data`` to ``config``; bytes TensorRT cannot use (cut
    short, another TensorRT or GPU) give a warning and an empty cache, never a failed build."""
    with recoverable_errors():
        cache = config.create_timing_cache(data or b"")
        usable = cache is not None and config.set_timing_cache(cache, False)
    if usable:
        return
    if data:
        log.warning(
            "TensorRT: %s is not a usable timing cache (cut short, or from another TensorRT or GPU); "
            "building without its timings, and it will be replaced",
            name,
        )
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        raise EngineBuildError(
            "TensorRT could not create an empty timing cache (see the TensorRT errors in the log)"
        )


def save_timing_cache(config: Any, cache: Any, path: Path) -> bytes:
    """Merge the timing cache on disk into this build's ``cache`` and write the result whole.

    Builds of other engines (other processes) share the file: each read it before building, so
    writing only this build's cache would drop the entries another build wrote meanwhile. Under
    a lock beside the file, the current file is combined in (``ITimingCache.combine``: entries
    this cache lacks are appended) and the union replaces it atomically.
    """
    try:
        with file_lock(path.with_name(f".{path.name}.lock")):
            disk = path.read_bytes() if path.is_file() else b""
            if disk:
                with recoverable_errors():
                    theirs = config.create_timing_cache(disk)
                    combined = theirs is not None and cache.combine(theirs, False)
                if not combined:
                    log.warning(
                        "TensorRT: %s is not a usable timing cache (cut short, or from another "
                        "TensorRT or GPU); replacing it with this build's",
                        path,
                    )
            data = bytes(cache.serialize())
            atomic_write_bytes(path, data)
    except OSError as exc:
        reason = f"cannot write the TensorRT timing cache {path}: {exc.strerror or exc}"
        raise CacheUnwritableError(
            f"{reason}; point --engine-dir (or RTSEG_ENGINE_DIR) at a writable folder", reason
        ) from None
    return data


def pin_exact_layers(trt: Any, network: Any) -> int:
    """Keep the layers of rtseg's exact pooling-index rewrite (``onnx_rewrite.EXACT_MARK`` in their
    ONNX node names, which the parser gives its layers) in float32 in an fp16 or int8 build, where
    TensorRT may otherwise pick lower precision for any layer: they count positions in floats,
    exact to 2**24 in float32 and only to 2048 in float16 (ENet at 1024x512: 131,072 a plane), and
    compare the pooled maxima with their inputs, which must round alike. Returns how many."""
    floats = {trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.BF16}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if EXACT_MARK not in layer.name or layer.type == trt.LayerType.CONSTANT:
            continue
        tensors = [layer.get_input(j) for j in range(layer.num_inputs)]
        outputs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floats]
        if not outputs and not any(t is not None and t.dtype in floats for t in tensors):
            continue  # integer arithmetic (the index offsets): exact in any build
        layer.precision = trt.DataType.FLOAT
        for j in outputs:
            layer.set_output_type(j, trt.DataType.FLOAT)
        pinned += 1
    return pinned


def build_plan(
    model: onnx.ModelProto,
    *,
    precision: str,
    workspace_bytes: int,
    timing_cache: bytes | None = None,
    calibrator: Any = None,
    timing_path: Path | None = None,
) -> tuple[bytes, bytes]:
    """Serialised plan and updated timing cache for one stage graph; with ``timing_path``, the
    cache is also merged with that file's current content and saved there (``save_timing_cache``)."""
    trt = import_tensorrt()
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode (and flag 0) in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT could not parse the ONNX graph{_said(errors)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 graphs keep unquantised layers in fp16
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if calibrator is not None:
            config.int8_calibrator = calibrator
    if precision in ("fp16", "int8") and pin_exact_layers(trt, network):
        # Prefer, not obey: a layer TensorRT has no float32 kernel for warns instead of failing.
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    _start_timing_cache(config, timing_cache, str(timing_path) if timing_path else "the given timing cache")
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            raise EngineBuildError(
                f"ONNX input {tensor.name} has a dynamic shape {shape}; rtseg builds fixed-size plans"
            )
        profile.set_shape(tensor.name, shape, shape, shape)  # fixed: the engine input size
        if calibrator is not None and shape and shape[0] != calibrator.get_batch_size():
            # TensorRT 10 has no implicit batch: a stacked batch of 2 into a batch-1 input would
            # calibrate on its first frame and never say so.
            raise ConfigError(
                f"the INT8 calibrator's batch size is {calibrator.get_batch_size()} but the ONNX "
                f"input {tensor.name} has batch {shape[0]} ({shape}): they must be equal"
            )
    config.add_optimization_profile(profile)
    if calibrator is not None:
        config.set_calibration_profile(profile)
    with logger.capture() as errors:
        plan = builder.build_serialized_network(network, config)
    if calibrator is not None and getattr(calibrator, "error", None) is not None:
        raise calibrator.error
    if plan is None:
        hint = ""
        if any(OUT_OF_MEMORY.search(e) for e in errors):
            hint = " - the GPU ran out of memory: free GPU memory or pass a smaller workspace_gb"
        raise EngineBuildError(f"TensorRT failed to build the engine{_said(errors)}{hint}")
    timing = config.get_timing_cache()
    if timing_path is not None:
        return bytes(plan), save_timing_cache(config, timing, timing_path)
    return bytes(plan), bytes(timing.serialize())


def keep_outputs(model: onnx.ModelProto, outputs: tuple[str, ...]) -> onnx.ModelProto:
    """A copy of ``model`` whose only graph outputs are ``outputs``, without the nodes and
    initialisers nothing left needs (inputs stay: a plan's inputs are the stage's)."""
    have = [o.name for o in model.graph.output]
    missing = [n for n in outputs if n not in have]
    if missing:
        raise EngineBuildError(f"the stage graph has outputs {have}; asked to keep {missing} as well")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    kept_outputs = [o for o in graph.output if o.name in outputs]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    needed = set(outputs)
    nodes = []
    for node in reversed(graph.node):
        if needed & set(node.output):
            nodes.append(node)
            needed.update(i for i in node.input if i)
    nodes.reverse()
    del graph.node[:]
    graph.node.extend(nodes)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    infos = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return out


def plan_graph(source: Path, stage: str) -> tuple[onnx.ModelProto, list[str]]:
    """The ONNX graph a stage's plan is built from, and the rewrites made for TensorRT's parser:
    ``head`` keeps only the labels output, ``head_logits`` (from the same file) labels and logits."""
    model = onnx.load(str(source))
    if stage in PLAN_OUTPUTS:
        model = keep_outputs(model, tuple(PLAN_OUTPUTS[stage]))
    return for_tensorrt(model)


def build_stage(
    stage: str,
    source: Path,
    *,
    precision: str,
    workspace_gb: float,
    timing_path: Path,
    calibrator: Any = None,
) -> tuple[bytes, dict[str, Any]]:
    """One stage's serialised plan and its sidecar metadata; the shared timing cache is read
    before the build and, after it, merged with what concurrent builds saved meanwhile and
    replaced whole (``save_timing_cache``)."""
    graph, rewrites = plan_graph(source, stage)
    timing = timing_path.read_bytes() if timing_path.is_file() else None
    plan, _ = build_plan(
        graph,
        precision=precision,
        workspace_bytes=int(workspace_gb * 2**30),
        timing_cache=timing,
        calibrator=calibrator,
        timing_path=timing_path,
    )
    return plan, {"stage": stage, "source_onnx": source.name, "rewrites": rewrites, "io": graph_io(graph)}


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16,
        trt.DataType.INT8: torch.int8,
        trt.DataType.UINT8: torch.uint8,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
    }
    if dtype not in table:
        raise EngineBuildError(
            f"the plan has an input or output of TensorRT type {dtype}, which rtseg does not map to torch"
        )
    return table[dtype]


class PlanLoadError(EngineBuildError):
    """A plan this TensorRT could not deserialise, though its cache record (TensorRT version, GPU
    kind, SHA-256) matched: built against another CUDA driver or library, or damaged in a way its
    checksum cannot see. ``load_tensorrt`` rebuilds the plans once when it sees one."""

    def __init__(self, version: str, name: str, errors: list[str]) -> None:
        self.version, self.name, self.said = version, name, _said(errors)
        super().__init__(
            f"TensorRT {version} could not deserialise {name}{self.said}; a plan runs only with the "
            "TensorRT version and GPU kind that built it - delete the file to rebuild it"
        )


class _Plan:
    """One deserialised stage: its execution context and I/O tensor descriptions."""

    def __init__(self, runtime: Any, data: bytes, device: torch.device, name: str = "the plan") -> None:
        trt = import_tensorrt()
        with trt_logger(trt).capture() as errors:
            self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise PlanLoadError(trt.__version__, name, errors)
        with trt_logger(trt).capture() as errors:
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineBuildError(
                f"TensorRT could not create an execution context for {name}{_said(errors)} "
                "(is the GPU out of memory?)"
            )
        self.inputs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self.outputs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        modes = {}
        for i in range(self.engine.num_io_tensors):
            tensor = self.engine.get_tensor_name(i)
            modes[tensor] = self.engine.get_tensor_mode(tensor)
            if modes[tensor] == trt.TensorIOMode.INPUT:
                shape = tuple(self.engine.get_tensor_shape(tensor))
                if any(d < 0 for d in shape) or not self.context.set_input_shape(tensor, shape):
                    raise EngineBuildError(f"{name}: input {tensor} has no fixed shape ({shape})")
                self.inputs[tensor] = (shape, _torch_dtype(trt, self.engine.get_tensor_dtype(tensor)))
        for tensor, mode in modes.items():
            if mode == trt.TensorIOMode.OUTPUT:
                # The context's shape, valid once every input shape is set.
                shape = tuple(self.context.get_tensor_shape(tensor))
                if any(d < 0 for d in shape):
                    raise EngineBuildError(f"{name}: output {tensor} has no fixed shape ({shape})")
                self.outputs[tensor] = (shape, _torch_dtype(trt, self.engine.get_tensor_dtype(tensor)))
        self.device = device
        self._scratch = {n: torch.empty(s, dtype=d, device=device) for n, (s, d) in self.outputs.items()}

    def __call__(
        self, feed: Mapping[str, torch.Tensor], wanted: tuple[str, ...], stream: Any
    ) -> list[torch.Tensor]:
        keep = []
        for name, (shape, dtype) in self.inputs.items():
            tensor = feed[name]
            if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                raise ValueError(
                    f"TensorRT input {name}: expected {shape} {dtype}, got "
                    f"{tuple(tensor.shape)} {tensor.dtype}"
                )
            tensor = tensor.contiguous()
            keep.append(tensor)
            self._address(name, tensor)
        result = {}
        for name, (shape, dtype) in self.outputs.items():
            out = (
                torch.empty(shape, dtype=dtype, device=self.device) if name in wanted else self._scratch[name]
            )
            result[name] = out
            self._address(name, out)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineBuildError("TensorRT execute_async_v3 failed (see the TensorRT errors in the log)")
        return [result[n] for n in wanted]

    def _address(self, name: str, tensor: torch.Tensor) -> None:
        if not self.context.set_tensor_address(name, tensor.data_ptr()):
            raise EngineBuildError(
                f"TensorRT refused the buffer of {name} ({tuple(tensor.shape)} {tensor.dtype})"
            )


class TensorRTEngine(Engine):
    """Runs the stage plans; features are torch CUDA tensors, labels come back as NumPy."""

    batch = BACKEND_SPECS["tensorrt"].batch  # plans built from the batch-1 graphs

    def __init__(
        self,
        plans: Mapping[str, Path],
        *,
        net: StagedSegmenter,
        head_low_inputs: tuple[str, ...],
        input_size: tuple[int, int],
        precision: str,
        device: str,
        notes: tuple[str, ...] = (),
        logits_plan: Callable[[], Path] | None = None,
    ) -> None:
        """``plans``: low, deep and the labels-only head. ``logits_plan`` returns the path of the
        head plan with logits (building it if needed); it is called on the first logits request."""
        trt, index = require_tensorrt(device)
        self.device = torch.device("cuda", index)
        self.meta = net.meta
        self.stage_spec = net.stage_spec
        self.head_low_inputs = head_low_inputs
        self._logger = trt_logger(trt)  # must outlive the runtime and its engines
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self._stream = torch.cuda.Stream(self.device)
            with torch.cuda.stream(self._stream):
                self._plans = {
                    s: _Plan(self._runtime, Path(p).read_bytes(), self.device, name=Path(p).name)
                    for s, p in plans.items()
                }
        low_plan = self._plans["low"].inputs.get(IMAGE)
        check_image_input(Path(plans["low"]), low_plan[0] if low_plan else (), tuple(input_size))  # type: ignore[arg-type]
        # An execution context runs one inference at a time: callers on several threads (a
        # server's workers) take turns, as they would on the one GPU anyway.
        self._lock = threading.Lock()
        self._logits_plan = logits_plan
        self.info = EngineInfo(
            model=net.meta.model,
            backend="tensorrt",
            precision=precision,
            device=str(self.device),
            input_size=tuple(input_size),  # type: ignore[arg-type]
            library=f"tensorrt {trt.__version__}",
            artifacts=tuple(str(p) for p in plans.values()),
            notes=notes,
        )

    def _device(self, value: Any) -> torch.Tensor:
        tensor = from_numpy(value) if isinstance(value, np.ndarray) else value
        return tensor.to(self.device, non_blocking=True)

    def _run(self, stage: str, feed: Mapping[str, Any], wanted: tuple[str, ...]) -> list[torch.Tensor]:
        plan = self._plans[stage]
        caller = torch.cuda.current_stream(self.device)
        with self._lock:
            # The engine's stream starts after what the caller queued (its inputs may come from
            # there) and the caller's later work (labels.cpu(), torch ops on features) waits for it.
            self._stream.wait_stream(caller)
            with torch.cuda.stream(self._stream):
                inputs = {n: self._device(feed[n]) for n in plan.inputs}
                out = plan(inputs, wanted, self._stream)
            caller.wait_stream(self._stream)
        for tensor in inputs.values():
            tensor.record_stream(self._stream)  # not reused while TensorRT may still read it
        for tensor in out:
            tensor.record_stream(caller)  # allocated on the engine's stream, used on the caller's
        return out

    def run_low(self, image: Array) -> Features:
        self._check_open()
        self.check_image(image)
        x = image[None] if image.ndim == 3 else image
        plan = self._plans["low"]
        names = tuple(plan.outputs)
        return dict(zip(names, self._run("low", {IMAGE: x}, names), strict=True))

    def run_deep(self, low: Features) -> Features:
        self._check_open()
        names = tuple(self._plans["deep"].outputs)
        return dict(zip(names, self._run("deep", low, names), strict=True))

    def _logits_head(self) -> str:
        """The head plan with logits, deserialised on first use (built first if not cached)."""
        with self._lock:
            if LOGITS_STAGE not in self._plans:
                if self._logits_plan is None:
                    raise ConfigError(
                        "this TensorRT engine has no head plan with logits (logits_plan=None); "
                        "load it with load_tensorrt to run(logits=True)"
                    )
                path = Path(self._logits_plan())
                with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
                    plan = _Plan(self._runtime, path.read_bytes(), self.device, name=path.name)
                self._plans[LOGITS_STAGE] = plan
        return LOGITS_STAGE

    def run_head(self, low: Features, deep: Features, *, logits: bool = False) -> Any:
        self._check_open()
        feed = {**low, **deep}
        if logits:
            labels, out = self._run(self._logits_head(), feed, (LABELS, LOGITS))
            return labels.cpu().numpy(), out.float()
        (labels,) = self._run("head", feed, (LABELS,))  # the labels-only plan: no logits output
        return labels.cpu().numpy()

    def synchronize(self) -> None:
        # The caller's stream waits for the engine's after each plan: waiting for it is enough.
        torch.cuda.current_stream(self.device).synchronize()

    def _release(self) -> None:
        self._plans.clear()


def tensorrt_onnx(
    net: StagedSegmenter,
    size: tuple[int, int],
    precision: str,
    cache: ArtifactCache,
    calibration: CalibrationList | None,
    int8_mode: str,
    wh: str | None = None,
) -> OnnxStages:
    """The ONNX stages a TensorRT build parses (QDQ symmetric int8 for explicit quantisation)."""
    fp32 = ensure_onnx(net, size, cache, wh=wh)
    if precision == "int8" and int8_mode == "qdq":
        from .onnx_engines import int8_stages

        return int8_stages(net, fp32, cache, calibration, flavour="tensorrt")
    return fp32


def _feeds(
    net: StagedSegmenter,
    size: tuple[int, int],
    device: str,
    calibration: CalibrationList,
    stage: str,
    inputs: tuple[str, ...],
) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
    """Calibration feeds for one stage, computed by the torch reference on the GPU when asked for."""

    def feeds() -> Iterator[dict[str, np.ndarray]]:
        from .torch_backend import TorchEngine

        reference = TorchEngine(net, input_size=size, device=device)
        yield from stage_feeds(reference, calibration.frames(size), stage, inputs)

    return feeds


def load_tensorrt(
    net: StagedSegmenter,
    *,
    size: tuple[int, int],
    precision: str,
    device: str,
    cache: ArtifactCache,
    calibration: CalibrationList | None = None,
    wh: str | None = None,
    workspace_gb: float = 4.0,
    int8_mode: str = "qdq",
    calibration_dir: str | Path | None = None,
) -> TensorRTEngine:
    precisions = BACKEND_SPECS["tensorrt"].precisions
    if precision not in precisions:
        raise ConfigError(f"tensorrt precision must be one of {', '.join(precisions)}, got {precision!r}")
    if int8_mode not in INT8_MODES:
        raise ConfigError(f"int8_mode must be one of {', '.join(INT8_MODES)}, got {int8_mode!r}")
    if workspace_gb <= 0:
        raise ConfigError(f"workspace_gb must be positive, got {workspace_gb}")
    if precision == "int8" and int8_mode == "calibrator" and calibration is None:
        raise ConfigError("int8_mode='calibrator' needs a calibration list (rtseg calibrate)")
    if calibration is not None and precision != "int8":
        raise ConfigError(f"calibration applies to int8 engines, not {precision}")
    trt, index = require_tensorrt(device)
    tag = device_tag(index)
    source = tensorrt_onnx(net, size, precision, cache, calibration, int8_mode, wh)
    variant = ""
    if precision == "int8":
        variant = f"{source.key.variant}q" if int8_mode == "qdq" else f"{calibration.id}c"  # type: ignore[union-attr]
    source_sha256 = {st: str(source.sidecars[st].get("sha256")) for st in STAGES}
    key = plan_key(
        source.key,
        precision=precision,
        device=tag,
        trt_version=trt.__version__,
        variant=variant,
        source_sha256=source_sha256,
    )
    timing_path = timing_cache_path(cache, tag, trt.__version__)
    calib_dir = Path(calibration_dir) if calibration_dir is not None else default_calibration_dir() / "cache"

    def build(todo: tuple[str, ...]) -> dict[str, tuple[bytes, dict[str, Any]]]:
        out = {}
        for stage in todo:
            origin = "head" if stage == LOGITS_STAGE else stage  # both head plans: one ONNX
            file = source.files[origin]
            calibrator = None
            if precision == "int8" and int8_mode == "calibrator":
                inputs = tuple(
                    i["name"] for i in graph_io(onnx.load(str(file), load_external_data=False))["inputs"]
                )
                calibrator = as_trt_calibrator(
                    EntropyCalibrator(
                        _feeds(net, size, device, calibration, origin, inputs),  # type: ignore[arg-type]
                        # the source digest too: scales of another export's tensors must not be read
                        cache_path=calib_dir / f"{key.stem}.{key.source}.{stage}.calib",
                    )
                )
            with torch.cuda.device(index):
                plan, metadata = build_stage(
                    stage,
                    file,
                    precision=precision,
                    workspace_gb=workspace_gb,
                    timing_path=timing_path,
                    calibrator=calibrator,
                )
            out[stage] = (
                plan,
                {
                    **metadata,
                    "source_sha256": source_sha256[origin],
                    "int8_mode": int8_mode if precision == "int8" else None,
                    "workspace_gb": workspace_gb,
                    "classes": net.meta.classes.to_dict(),
                    "preprocessing": net.meta.preprocessing.to_dict(),
                },
            )
        return out

    def logits_plan() -> Path:
        return cache.get_or_build(key, (LOGITS_STAGE,), "plan", build)[LOGITS_STAGE].path

    def engine(plans: Mapping[str, Path]) -> TensorRTEngine:
        return TensorRTEngine(
            plans,
            net=net,
            head_low_inputs=source.head_low_inputs,
            input_size=size,
            precision=precision,
            device=device,
            notes=(f"timing cache {timing_path.name}",),
            logits_plan=logits_plan,
        )

    return open_or_rebuild(cache, key, build, engine)


def open_or_rebuild(
    cache: ArtifactCache,
    key: ArtifactKey,
    build: Callable[[tuple[str, ...]], Mapping[str, tuple[bytes, Mapping[str, Any]]]],
    open_plans: Callable[[Mapping[str, Path]], Opened],
) -> Opened:
    """Open the cached plans; when TensorRT cannot deserialise one whose record matched, rebuild
    all of this key's plans once (as DeepStream's nvinfer does): what broke one, a driver or
    library change, breaks its siblings built in the same setting. A second failure is raised."""
    plans = cache.get_or_build(key, PLAN_STAGES, "plan", build)
    try:
        return open_plans({s: a.path for s, a in plans.items()})
    except PlanLoadError as exc:
        log.warning("%s; rebuilding the %s plans", exc, key.stem)
        for stage in (*PLAN_STAGES, LOGITS_STAGE):
            cache.discard(key, stage, "plan")
    plans = cache.get_or_build(key, PLAN_STAGES, "plan", build)
    try:
        return open_plans({s: a.path for s, a in plans.items()})
    except PlanLoadError as exc:
        raise EngineBuildError(
            f"TensorRT {exc.version} could not deserialise {exc.name}, rebuilt for this load a moment "
            f"ago{exc.said}: the TensorRT Python package and the libnvinfer it loads may differ, or the "
            "GPU driver may be too old for this TensorRT"
        ) from None
