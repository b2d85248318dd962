"""Per-stage ONNX export: the graphs ONNX Runtime, OpenVINO and TensorRT all build from.

Each stage becomes one file with flat, named tensors: ``low`` (uint8 NHWC BGR image in,
normalisation inside), ``deep`` and ``head`` (``labels`` uint8 and ``logits`` out, so one artifact
serves both ``run`` and ``run(logits=True)``). Weights are stored inline, never in a
``.onnx.data`` side file, because ONNX Runtime's quantisation pre-processing cannot read those.

The TorchScript exporter is tried first: it takes under a second per stage where the default
(dynamo) exporter takes 5-20 s on this machine. It cannot export adaptive pooling whose output
does not divide the input (ESPNetv2's pyramid pooling); those stages fall back to the dynamo
exporter. Which one produced a file is recorded in its sidecar.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from ..data import preprocess
from ..errors import ConfigError, EngineBuildError
from ..models.base import StagedSegmenter, module_modes, restore_modes
from . import graphs
from .backends import EXPORTERS
from .cache import Artifact, ArtifactCache, ArtifactKey, weights_hash
from .graphs import DeepGraph, HeadGraph, LowGraph, head_low_inputs

log = logging.getLogger(__name__)

OPSET = 17
STAGES = ("low", "deep", "head")
IMAGE = "image"
LABELS = "labels"
LOGITS = "logits"

_ONNX_TYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.BOOL: "bool",
}


@dataclass(frozen=True)
class StageGraph:
    """One stage as an exportable module with named flat inputs and outputs."""

    name: str
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def exporter_library() -> str:
    return f"torch{torch.__version__}"


def stage_graphs(model: StagedSegmenter, input_size: tuple[int, int]) -> dict[str, StageGraph]:
    """The low/deep/head modules with example inputs for tracing."""
    spec = model.stage_spec
    w, h = input_size
    if w % spec.input_multiple or h % spec.input_multiple:
        raise ConfigError(
            f"{model.meta.model} needs an input size divisible by {spec.input_multiple}, got {w}x{h}"
        )
    other = next(((n, p.dtype) for n, p in model.named_parameters() if p.dtype != torch.float32), None)
    if other is not None:
        # The graphs take a float32 image; the exporter failed with "Input type (torch.FloatTensor)
        # and weight type (torch.DoubleTensor) should be the same".
        raise ConfigError(
            f"{model.meta.model}: the exported engines are built from a float32 network, but "
            f"parameter {other[0]} is {other[1]}; pass the network as net.float()"
        )
    model = model.eval()
    classes = len(model.meta.classes)
    low_in = head_low_inputs(model, input_size)
    # Wrappers in eval mode too: the exporter restores the top module's mode afterwards, and a
    # wrapper left in training mode would switch the shared model's BatchNorm and dropout on.
    low = LowGraph(model, model.meta.preprocessing).eval()
    deep = DeepGraph(model).eval()
    head = HeadGraph(model, low_in, classes, with_logits=True, portable_labels=True).eval()
    clash = {LABELS, LOGITS, IMAGE} & ({f.name for f in spec.low} | {f.name for f in spec.deep})
    if clash:
        raise EngineBuildError(
            f"{model.meta.model}: feature names {sorted(clash)} clash with graph I/O names"
        )
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        low_values = dict(zip(low.names, low(image), strict=True))
        deep_values = dict(zip(deep.names, deep(*(low_values[n] for n in deep.input_names)), strict=True))
    graphs = {
        "low": StageGraph("low", low, (image,), (IMAGE,), low.names),
        "deep": StageGraph(
            "deep", deep, tuple(low_values[n] for n in deep.input_names), deep.input_names, deep.names
        ),
        "head": StageGraph(
            "head",
            head,
            (*(low_values[n] for n in low_in), *(deep_values[n] for n in deep.names)),
            (*low_in, *deep.names),
            (LABELS, LOGITS),
        ),
    }
    return graphs


def _export_torchscript(graph: StageGraph, opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(
        graph.module,
        graph.example,
        buffer,
        dynamo=False,
        input_names=list(graph.inputs),
        output_names=list(graph.outputs),
        opset_version=opset,
        do_constant_folding=True,
    )
    return onnx.load_from_string(buffer.getvalue())


def _export_dynamo(graph: StageGraph, opset: int) -> onnx.ModelProto:
    program = torch.onnx.export(
        graph.module,
        graph.example,
        None,
        dynamo=True,
        external_data=False,
        input_names=list(graph.inputs),
        output_names=list(graph.outputs),
        opset_version=opset,
        verbose=False,
    )
    if program is None:
        raise EngineBuildError(f"the dynamo exporter returned nothing for stage {graph.name}")
    return program.model_proto


# Loggers of the exporters' libraries: their INFO/WARNING chatter (hundreds of lines for one
# dynamo export) is captured during an export, not shown.
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo", "torch._export")
ERROR_TAIL_LINES = 20


class _Captured(logging.Handler):
    """Collects the exporter libraries' log records as text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:
            self.lines.append(f"{record.levelname}:{record.name}:{record.msg!r}")


# One capture (one export) at a time in the process. Everything a capture swaps is process-wide:
# file descriptors 1 and 2, sys.stdout and sys.stderr, the exporter loggers' handlers, and the
# warning filters export_graph sets. Two overlapping captures (two Segmenters built at once on
# a cold engine cache) each saved the other's temporary file as the "original" and restored it:
# the process was left writing its stdout and stderr into a deleted file, for good. Held across
# the whole export, it also keeps two exports apart in torch's TorchScript exporter, which keeps
# its settings (opset, training mode, "in an export") in module globals. Reentrant: export_graph
# holds it around its warning filters and captured_output takes it again inside.
_CAPTURE_LOCK = threading.RLock()


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Capture everything an exporter writes: Python and C++ writes to stdout and stderr (the
    TorchScript exporter dumps its whole IR graph from C++ when it fails) and the exporter
    libraries' logging. The list it yields is filled with the text when the block ends.

    The descriptors are captured, not only sys.stdout and sys.stderr, because that C++ dump (one
    on every fallback to the dynamo exporter, as ESPNetv2's stages take) is hundreds of lines that
    Python never sees. That makes the capture process-wide while it lasts: another thread's
    output in that time (a print, a console log handler, a C++ library) lands in it too, and goes
    to this export's debug log instead of the console. Accepted because exports happen while an
    engine is built, once per cache entry, usually before anything else runs; captures are
    serialised (``_CAPTURE_LOCK``), so an export started meanwhile waits for this one."""
    with _CAPTURE_LOCK, _capturing() as lines:
        yield lines


@contextlib.contextmanager
def _capturing() -> Iterator[list[str]]:
    handler = _Captured()
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.handlers[:] = [handler]
        lg.propagate = False
        lg.setLevel(logging.INFO)
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink, contextlib.ExitStack() as stack:
        text = io.StringIO()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved_fds: list[tuple[int, int]] = []
        for fd in (1, 2):
            try:
                saved_fds.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
            except OSError:  # no such descriptor (an embedding host): Python-level capture only
                continue
        stack.enter_context(contextlib.redirect_stdout(text))
        stack.enter_context(contextlib.redirect_stderr(text))
        try:
            yield lines
        finally:
            stack.close()
            for fd, copy in saved_fds:
                os.dup2(copy, fd)
                os.close(copy)
            for lg, (handlers, propagate, level) in zip(loggers, saved, strict=True):
                lg.handlers[:] = handlers
                lg.propagate = propagate
                lg.setLevel(level)
            sink.seek(0)
            raw = sink.read().decode("utf-8", errors="replace")
            lines.extend(ln for ln in (raw + text.getvalue()).splitlines() if ln.strip())
            lines.extend(handler.lines)


def export_graph(
    graph: StageGraph, *, exporter: str = "auto", opset: int = OPSET
) -> tuple[onnx.ModelProto, str]:
    """Export one stage; returns the model and the exporter that produced it.

    The exporters' own output is captured (logged at debug level, and its end quoted in the
    error if every exporter fails): on success with a fallback, one info line says so.
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    order = ("torchscript", "dynamo") if exporter == "auto" else (exporter,)
    errors: list[str] = []
    output: list[str] = []
    for name in order:
        try:
            # The lock covers the warning filters too: they are process-wide, and two exports that
            # saved and restored them out of order left every warning ignored, for good.
            with _CAPTURE_LOCK, warnings.catch_warnings(), captured_output() as lines:
                warnings.simplefilter("ignore")
                with torch.no_grad():
                    proto = (
                        _export_torchscript(graph, opset)
                        if name == "torchscript"
                        else _export_dynamo(graph, opset)
                    )
        except Exception as exc:  # exporters raise many unrelated types; keep the message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            errors.append(f"{name}: {first[:300]}")
            output.extend(lines)
            _log_output(graph.name, name, lines)
            continue
        _log_output(graph.name, name, lines)
        _check_io(proto, graph)
        if errors:
            written = max(
                (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=opset
            )
            at = f"opset {written}" + (f", {opset} was asked for" if written != opset else "")
            log.info(
                "ONNX export of stage %s: %s; exported with %s instead (%s)",
                graph.name,
                "; ".join(errors)[:200],
                name,
                at,
            )
        return proto, name
    message = f"cannot export stage {graph.name} to ONNX: " + "; ".join(errors)
    if output:
        message += f"\nlast {min(len(output), ERROR_TAIL_LINES)} lines the exporters wrote:\n" + "\n".join(
            line[:300] for line in output[-ERROR_TAIL_LINES:]
        )
    raise EngineBuildError(message)


def _log_output(stage: str, exporter: str, lines: list[str]) -> None:
    if lines and log.isEnabledFor(logging.DEBUG):
        log.debug(
            "%s exporter output for stage %s (%d lines):\n%s", exporter, stage, len(lines), "\n".join(lines)
        )


def _check_io(proto: onnx.ModelProto, graph: StageGraph) -> None:
    inputs = tuple(
        i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}
    )
    outputs = tuple(o.name for o in proto.graph.output)
    if inputs != graph.inputs or outputs != graph.outputs:
        raise EngineBuildError(
            f"exported stage {graph.name} has inputs {inputs} and outputs {outputs}, "
            f"expected {graph.inputs} and {graph.outputs}"
        )


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def graph_io(proto: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """Names, shapes and dtypes of a graph's inputs and outputs (for sidecars and checks)."""
    initializers = {t.name for t in proto.graph.initializer}

    def describe(v: onnx.ValueInfoProto) -> dict[str, Any]:
        dtype = _ONNX_TYPES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type))
        return {"name": v.name, "shape": _dims(v), "dtype": dtype}

    return {
        "inputs": [describe(v) for v in proto.graph.input if v.name not in initializers],
        "outputs": [describe(v) for v in proto.graph.output],
    }


def unloadable_graph(path: Path, backend: str, exc: BaseException) -> EngineBuildError:
    """The typed error for a stage file a runtime cannot read (cut short, not a graph): the
    runtimes' own exceptions are of many unrelated types and often do not name the file."""
    said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return EngineBuildError(
        f"{backend} could not load {path}: {said}; the file is cut short or not a graph - delete it "
        "(and its .json sidecar) so that it is rebuilt"
    )


def check_image_input(path: Path, shape: tuple[int, ...], input_size: tuple[int, int]) -> None:
    """A low-stage graph or plan takes one batch-1 HxWx3 image at the engine's input size: one
    exported for another size would fail inside the runtime on every frame, so refuse it here."""
    w, h = input_size
    expected = (1, h, w, 3)
    if tuple(shape) != expected:
        raise EngineBuildError(
            f"{path.name} takes images of shape {tuple(shape)} (input {IMAGE!r}), but the engine input "
            f"size {w}x{h} needs {expected}: it was built for another size ({path})"
        )


def set_metadata(proto: onnx.ModelProto, metadata: Mapping[str, Any]) -> None:
    """Store ``metadata`` as ``rtseg.<key>`` metadata_props (values JSON-encoded)."""
    keep = [p for p in proto.metadata_props if not p.key.startswith("rtseg.")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = f"rtseg.{key}"
        entry.value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``rtseg.*`` metadata_props of an ONNX file, decoded."""
    proto = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for p in proto.metadata_props:
        if p.key.startswith("rtseg."):
            try:
                out[p.key[len("rtseg.") :]] = json.loads(p.value)
            except ValueError:
                out[p.key[len("rtseg.") :]] = p.value
    return out


def serialize(proto: onnx.ModelProto) -> bytes:
    """Validated bytes with every weight inline (ONNX's 2 GB protobuf limit applies)."""
    data = proto.SerializeToString()
    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except onnx.checker.ValidationError as exc:
        raise EngineBuildError(f"exported ONNX graph is invalid: {exc}") from None
    return data


def common_metadata(model: StagedSegmenter, key: ArtifactKey) -> dict[str, Any]:
    meta = model.meta
    return {
        "key": key.to_dict(),
        "classes": meta.classes.to_dict(),
        "num_outputs": meta.num_outputs,
        "preprocessing": meta.preprocessing.to_dict(),
        "stage_spec": {
            "low": [f.name for f in model.stage_spec.low],
            "deep": [f.name for f in model.stage_spec.deep],
            "deep_inputs": list(model.stage_spec.deep_inputs),
            "output_stride": model.stage_spec.output_stride,
        },
    }


@dataclass(frozen=True)
class OnnxStages:
    """The cached fp32 ONNX files of one model at one input size."""

    key: ArtifactKey
    files: Mapping[str, Path]
    head_low_inputs: tuple[str, ...]
    sidecars: Mapping[str, Mapping[str, Any]]


_PACKAGE = Path(__file__).resolve().parent.parent


def export_code_digest(model: StagedSegmenter) -> str:
    """Short SHA-256 of the rtseg source files the exported graphs come from: this module, the
    stage wrappers, the input normalisation and every module that defines one of ``model``'s
    layers or their bases. rtseg's version number does not change with each commit, so without
    this a checkout updated in place would keep running graphs exported by its older code."""
    # preprocess.py: the in-graph normalisation (Normalize, Preprocessing.affine), a layer of the
    # stage wrappers, not of the model.
    files = {Path(p).resolve() for p in (__file__, graphs.__file__, preprocess.__file__)}
    for kind in {cls for module in model.modules() for cls in type(module).__mro__}:
        source = inspect.getsourcefile(kind) if kind.__module__.startswith("rtseg.") else None
        if source is not None and Path(source).resolve().is_relative_to(_PACKAGE):
            files.add(Path(source).resolve())
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def onnx_key(model: StagedSegmenter, input_size: tuple[int, int], *, wh: str | None = None) -> ArtifactKey:
    return ArtifactKey(
        model=model.meta.model,
        weights=wh or weights_hash(model),
        input_size=tuple(input_size),  # type: ignore[arg-type]
        precision="fp32",
        backend="onnx",
        device="any",
        library=exporter_library(),
        source=export_code_digest(model),
    )


def ensure_onnx(
    model: StagedSegmenter,
    input_size: tuple[int, int],
    cache: ArtifactCache,
    *,
    stages: tuple[str, ...] = STAGES,
    exporter: str = "auto",
    wh: str | None = None,
) -> OnnxStages:
    """The fp32 stage graphs from the cache, exported (and cached) where missing, stale or corrupt."""
    key = onnx_key(model, input_size, wh=wh)
    graphs: dict[str, StageGraph] = {}

    def build(todo: tuple[str, ...]) -> dict[str, tuple[bytes, dict[str, Any]]]:
        # Exported in eval mode; the caller's network is handed back in the mode it came in: one
        # being trained, built into an engine to validate on, went on training with BatchNorm frozen.
        modes = module_modes(model)
        try:
            return export(todo)
        finally:
            restore_modes(modes)

    def export(todo: tuple[str, ...]) -> dict[str, tuple[bytes, dict[str, Any]]]:
        graphs.update(stage_graphs(model, input_size))
        out = {}
        for stage in todo:
            proto, used = export_graph(graphs[stage], exporter=exporter)
            io_info = graph_io(proto)
            metadata = {
                **common_metadata(model, key),
                "stage": stage,
                "io": io_info,
                "exporter": used,
                "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
            }
            set_metadata(proto, metadata)
            out[stage] = (serialize(proto), metadata)
        return out

    def check(sidecar: Mapping[str, Any]) -> str | None:
        if _io_input_names(sidecar) is None:  # a sidecar edited or written by another version
            return "its sidecar has no valid io.inputs list"
        # The exporter is not in the name (both make the same graph where both work), but one asked
        # for by name must be the one that made the files, or asking would change nothing.
        if exporter == "auto" or sidecar.get("exporter") == exporter:
            return None
        return f"exported by {sidecar.get('exporter')!r}, and exporter {exporter!r} was asked for"

    artifacts: dict[str, Artifact] = cache.get_or_build(key, stages, "onnx", build, check=check)
    low_in = _head_low_inputs(artifacts["head"].sidecar, model) if "head" in artifacts else ()
    return OnnxStages(
        key=key,
        files={s: a.path for s, a in artifacts.items()},
        head_low_inputs=low_in,
        sidecars={s: a.sidecar for s, a in artifacts.items()},
    )


def _io_input_names(sidecar: Mapping[str, Any]) -> list[str] | None:
    """The input names a sidecar's ``io`` lists, or None when it has no such well-formed list."""
    io = sidecar.get("io")
    inputs = io.get("inputs") if isinstance(io, Mapping) else None
    if not isinstance(inputs, list) or not all(
        isinstance(i, Mapping) and isinstance(i.get("name"), str) for i in inputs
    ):
        return None
    return [i["name"] for i in inputs]


def _head_low_inputs(sidecar: Mapping[str, Any], model: StagedSegmenter) -> tuple[str, ...]:
    low_names = {f.name for f in model.stage_spec.low}
    return tuple(n for n in _io_input_names(sidecar) or () if n in low_names)
