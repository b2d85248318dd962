"""INT8 stage graphs by ONNX Runtime static quantisation (QDQ), cached like every other artifact.

Two flavours of the same calibration: ``cpu`` (uint8 activations, int8 per-channel weights: the
U8S8 kernels ONNX Runtime and OpenVINO run fastest on x86) and ``tensorrt`` (symmetric int8
activations and weights with zero points of 0, which TensorRT's explicit quantisation requires).
Ranges come from percentile calibration of each stage on the fp32 network's activations.

Pitfalls avoided here (see ../shared/notes/cpu-engines.md): weights are inline in the fp32
graphs, so ``quant_pre_process`` can read them; ``CalibMaxIntermediateOutputs`` is not used,
because in this ONNX Runtime it discards the collected ranges every N batches (and then fails
with "No data is collected" whenever N divides the number of frames).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..atomic import atomic_write_bytes
from ..errors import BackendUnavailableError, ConfigError, EngineBuildError, RtsegError
from ..models.base import StagedSegmenter
from .cache import ArtifactCache, ArtifactKey, digest, file_lock, file_safe
from .calibration import (
    CalibrationList,
    calibration_cache_is_a_folder,
    calibration_cache_unwritable,
    default_calibration_dir,
    stage_feeds,
)
from .onnx_export import STAGES, OnnxStages, common_metadata, graph_io, serialize, set_metadata
from .ort_backend import session_options

log = logging.getLogger(__name__)

FLAVOURS = ("cpu", "tensorrt")


def _quantization() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError:
        raise BackendUnavailableError(
            "int8 quantisation needs onnxruntime's quantisation tools: pip install onnxruntime"
        ) from None
    return quantization


def settings() -> dict[str, Any]:
    """The quantisation settings an int8 artifact depends on (part of its key's ``source``)."""
    return {
        "format": "QDQ",
        "per_channel": True,
        "method": f"Percentile {PERCENTILE}",
        "schemes": [asdict(s) for s in SCHEMES],
        "tensorrt_schemes": [asdict(s) for s in TENSORRT_SCHEMES],
        "guard": GUARD,
        "check_feeds": CHECK_FEEDS,
        "concat_range_ratio": CONCAT_RANGE_RATIO,
        "tensorrt_options": TENSORRT_OPTIONS,
    }


def fp32_digests(fp32: OnnxStages) -> dict[str, str]:
    """SHA-256 of each fp32 stage graph, from its validated sidecar: covers the weights, the
    exporter, its torch version and the opset, everything the int8 graphs are quantised from."""
    out = {}
    for stage in STAGES:
        sha = fp32.sidecars.get(stage, {}).get("sha256")
        if not isinstance(sha, str) or not sha:
            raise ConfigError(
                f"int8 needs all fp32 stages {STAGES} with their sidecars; stage {stage!r} has "
                f"sha256 {sha!r} in {fp32.key.stem}"
            )
        out[stage] = sha
    return out


def int8_depends_on(fp32: OnnxStages, calibration_id: str, flavour: str) -> dict[str, Any]:
    """Everything an int8 artifact is built from; recorded in its sidecar, digested into its key."""
    import onnxruntime

    return {
        "fp32_key": fp32.key.to_dict(),
        "fp32_sha256": fp32_digests(fp32),
        "exporter": {s: fp32.sidecars[s].get("exporter") for s in STAGES},
        "calibration_id": calibration_id,
        "flavour": flavour,
        "onnxruntime": onnxruntime.__version__,
        "settings": settings(),
    }


def int8_key(fp32: OnnxStages, calibration: CalibrationList | str, flavour: str) -> ArtifactKey:
    """The int8 artifacts' key: named by the weights, size, calibration list, flavour and ORT
    version; ``source`` also digests the fp32 graphs' hashes (so another export, exporter or
    torch version) and the quantisation settings, which a name cannot spell."""
    import onnxruntime

    if flavour not in FLAVOURS:
        raise ConfigError(f"int8 flavour must be one of {', '.join(FLAVOURS)}, got {flavour!r}")
    calibration_id = calibration if isinstance(calibration, str) else calibration.id
    k = fp32.key
    return ArtifactKey(
        model=k.model,
        weights=k.weights,
        input_size=k.input_size,
        precision="int8",
        backend="onnx",
        device="any",
        library=f"ort{onnxruntime.__version__}",
        variant=f"{calibration_id}{'s' if flavour == 'tensorrt' else 'u'}",
        source=digest(int8_depends_on(fp32, calibration_id, flavour)),
    )


def shared_ranges_path(ranges_dir: Path, fp32: OnnxStages, calibration: CalibrationList, stage: str) -> Path:
    """Where a stage's calibrated ranges are shared by both flavours: named by the fp32 graphs'
    hashes (tensor names and fp32 activations differ between exports) and the percentile."""
    tag = digest({"fp32_sha256": fp32_digests(fp32), "method": f"Percentile {PERCENTILE}"}, 10)
    return ranges_dir / f"{fp32.key.stem}.{calibration.id}.{stage}.{tag}.ranges.json"


class _Reader:
    """onnxruntime CalibrationDataReader over an iterator of feeds (one pass, then exhausted)."""

    def __init__(self, feeds: Iterator[Mapping[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._feeds, None)
        if feed is None:
            return None
        self.count += 1
        return dict(feed)

    def rewind(self) -> None:  # part of the reader protocol; calibration reads the data once
        raise EngineBuildError("calibration data can be read only once")


@dataclass(frozen=True)
class Scheme:
    """Which ops get Q/DQ: fewer quantised tensors trade int8 kernels for accuracy."""

    name: str
    op_types: tuple[str, ...]
    float_outputs: tuple[str, ...] = ()  # op types whose outputs stay float (inputs still int8)


# Tried in order per stage; the first whose outputs stay within MAX_RELATIVE_ERROR of fp32 wins.
# "full" quantises the compute and the cheap ops between them so whole DQ -> Conv -> Q units run
# as int8 kernels; "convs" quantises convolution inputs, weights and outputs; "conv-inputs" only
# their inputs and weights (also the placement TensorRT's explicit quantisation prefers). Never
# quantised: BatchNormalization that could not be folded into a convolution, PReLU, the in-graph
# normalisation's Mul, the final argmax.
SCHEMES = (
    Scheme(
        "full",
        (
            "Conv",
            "ConvTranspose",
            "MatMul",
            "Gemm",
            "Add",
            "Concat",
            "Relu",
            "Clip",
            "MaxPool",
            "AveragePool",
            "Resize",
        ),
    ),
    Scheme("convs", ("Conv", "ConvTranspose", "MatMul", "Gemm")),
    Scheme(
        "conv-inputs",
        ("Conv", "ConvTranspose", "MatMul", "Gemm"),
        float_outputs=("Conv", "ConvTranspose", "MatMul", "Gemm"),
    ),
)
TENSORRT_SCHEMES = (SCHEMES[2],)
# quantize_static's extra options for the tensorrt flavour: zero points of 0, and biases left in
# float (QuantizeBias False): ONNX Runtime's default stores them int32 behind a DequantizeLinear,
# which TensorRT's ONNX parser refuses ("only activation types allowed as input to this layer").
TENSORRT_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
# Worst per-channel relative RMS error of a stage's float outputs (and label disagreement of its
# uint8 outputs) allowed before a stage falls back to the next scheme, and finally to fp32.
# Per channel, because one RMS over a whole output hides a few badly distorted channels under the
# large ones, and later layers may depend on exactly those. Measured on ESPNet CamVid (AVX-512
# VNNI CPU, ONNX Runtime): the low stage's "full" scheme has a whole-output error of only 0.039
# but a worst channel of 0.28, and cost 2.4 test mIoU; the schemes this limit accepts (low
# conv-inputs 0.13, deep convs 0.10, head full 0.05) lose 0.14.
MAX_RELATIVE_ERROR = 0.15
CHANNEL_FLOOR = 0.1  # see output_error
# Recorded in each int8 artifact; one built under another guard is rebuilt.
GUARD = f"worst-channel relative RMS (floor {CHANNEL_FLOOR} of the output's) <= {MAX_RELATIVE_ERROR}"
CHECK_FEEDS = 4
# Activation ranges clip the 0.01 % most extreme values: on ESPNet's deep stage this halved the
# error of MinMax ranges (0.05 instead of 0.10 relative RMS), which outliers stretch.
PERCENTILE = 99.99
# A Concat shares one scale between its inputs. ESPNet concatenates features (range ~10) with the
# normalised image (range ~0.02: the authors divide by 255 after standardising): one 8-bit scale
# erases the image. Concats whose inputs' ranges differ by more than this factor stay in float.
CONCAT_RANGE_RATIO = 16.0


def _abs_range(data: Any) -> float:
    low, high = data.range_value
    return float(max(np.max(np.abs(low)), np.max(np.abs(high))))


def mismatched_concats(model: onnx.ModelProto, ranges: Any, ratio: float = CONCAT_RANGE_RATIO) -> list[str]:
    """Names of Concat nodes whose calibrated input ranges differ by more than ``ratio``."""
    bad = []
    for node in model.graph.node:
        if node.op_type != "Concat":
            continue
        spans = [_abs_range(ranges[i]) for i in node.input if i in ranges]
        spans = [v for v in spans if v > 0]
        if len(spans) >= 2 and max(spans) / min(spans) > ratio:
            bad.append(node.name)
    return bad


def output_error(reference: Any, candidate: Any, feeds: list[Mapping[str, np.ndarray]]) -> float:
    """Worst output error over ``feeds``: for float outputs the worst channel's relative RMS error
    (axis 1), for labels the fraction that differ.

    A channel's RMS is floored at ``CHANNEL_FLOOR`` of the whole output's: near-dead channels
    (common after ReLU, and in random-weight networks) would otherwise turn a negligible absolute
    error into an enormous relative one."""
    worst = 0.0
    for feed in feeds:
        for a, b in zip(reference.run(None, dict(feed)), candidate.run(None, dict(feed)), strict=True):
            if a.dtype.kind in "iub":
                worst = max(worst, float(np.mean(a != b)))
                continue
            a64 = a.astype(np.float64)
            diff = (a64 - b) ** 2
            axes = tuple(i for i in range(a64.ndim) if i != 1) if a64.ndim > 1 else None
            power = np.mean(a64**2, axis=axes)
            floor = CHANNEL_FLOOR**2 * float(np.mean(a64**2)) or 1.0
            worst = max(worst, float(np.max(np.sqrt(np.mean(diff, axis=axes) / np.maximum(power, floor)))))
    return worst


def quantize_graph(
    fp32_path: Path,
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    flavour: str,
    workdir: Path,
    ranges_path: Path | None = None,
    schemes: tuple[Scheme, ...] | None = None,
    max_error: float = MAX_RELATIVE_ERROR,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """One stage graph -> its QDQ int8 version calibrated on ``feeds``, and a report of the choice.

    Calibrates once (ranges for every tensor any scheme of any flavour quantises, saved to
    ``ranges_path`` and reused from there when it exists), then builds the schemes in order from
    those ranges and keeps the first accurate enough on the first calibration frames; a stage no
    scheme quantises accurately stays fp32 (scheme "float").
    """
    import onnxruntime

    q = _quantization()
    from onnxruntime.quantization.calibrate import load_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if schemes is None:
        schemes = SCHEMES if flavour == "cpu" else TENSORRT_SCHEMES
    pre = workdir / f"{fp32_path.stem}.pre.onnx"
    ranges_path = ranges_path or workdir / f"{fp32_path.stem}.ranges.json"
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    prepared = onnx.load(str(pre))
    if flavour == "cpu":
        types = {"activation_type": q.QuantType.QUInt8, "weight_type": q.QuantType.QInt8}
        extra: dict[str, Any] = {}
    else:
        types = {"activation_type": q.QuantType.QInt8, "weight_type": q.QuantType.QInt8}
        extra = dict(TENSORRT_OPTIONS)
    every_op = tuple(dict.fromkeys(op for scheme in (*SCHEMES, *schemes) for op in scheme.op_types))

    def build(scheme: Scheme, reader: Any, out: Path, exclude: list[str], cache: Path) -> None:
        options = dict(extra)
        if scheme.float_outputs:
            options["OpTypesToExcludeOutputQuantization"] = list(scheme.float_outputs)
        with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime prints its progress there
            q.quantize_static(
                str(pre),
                str(out),
                reader,
                quant_format=q.QuantFormat.QDQ,
                op_types_to_quantize=list(scheme.op_types),
                nodes_to_exclude=exclude,
                per_channel=True,
                calibrate_method=q.CalibrationMethod.Percentile,
                extra_options={**options, "CalibPercentile": PERCENTILE},
                calibration_cache_path=str(cache),
                **types,
            )

    check: list[Mapping[str, np.ndarray]] = []

    def keep_first(source: Iterable[Mapping[str, np.ndarray]]) -> Iterator[Mapping[str, np.ndarray]]:
        for feed in source:
            if len(check) < CHECK_FEEDS:
                check.append(feed)
            yield feed

    # ONNX Runtime reads and writes only a private copy in ``workdir``: the shared file is
    # replaced whole (atomic_write) under a lock, never read half-written, never unlinked while
    # the other flavour's build may be using it.
    local = workdir / f"{fp32_path.stem}.ranges.local.json"
    local.unlink(missing_ok=True)
    required = calibrated_tensors(prepared, every_op)
    method = q.CalibrationMethod.Percentile
    if ranges_path.is_dir():
        raise calibration_cache_is_a_folder(ranges_path)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(ranges_path.with_name(f".{ranges_path.name}.lock")))
        except OSError as exc:
            if not ranges_path.is_file():
                raise calibration_cache_unwritable(ranges_path, exc) from None
            # A read-only cache that holds the ranges: the file is only ever replaced whole, so
            # reading it unlocked is safe; calibrating again (if it is stale) fails on the write.
            log.info("int8: cannot lock %s (%s); reading it unlocked", ranges_path, exc.strerror or exc)
        shared: bytes | None = None
        if ranges_path.is_file():
            try:
                shared = ranges_path.read_bytes()
            except OSError as exc:  # the ranges only save time: calibrate again and replace them
                log.warning(
                    "int8: cannot read calibrated ranges %s (%s); calibrating again",
                    ranges_path,
                    exc.strerror or exc,
                )
        if shared is not None:
            local.write_bytes(shared)
            problem = _ranges_problem(local, method, required)
            if problem is None:
                log.info("int8: reusing calibrated ranges %s", ranges_path)
                check.extend(itertools.islice(feeds, CHECK_FEEDS))
            else:
                log.warning("int8: calibrated ranges %s are %s; calibrating again", ranges_path, problem)
                local.unlink()
        if not local.is_file():
            reader = _Reader(keep_first(feeds))
            try:
                calibrate = workdir / f"{fp32_path.stem}.calibrate.onnx"
                build(Scheme("calibrate", every_op), reader, calibrate, [], local)
            except ValueError as exc:  # onnxruntime: "No data is collected."
                # rtseg's own errors (a ConfigError is a ValueError) come from the frames and
                # say what is wrong: only onnxruntime's complaint about no data is replaced.
                if reader.count or isinstance(exc, RtsegError):
                    raise
            if reader.count == 0:
                raise EngineBuildError(f"no calibration data reached stage {fp32_path.name}")
            problem = _ranges_problem(local, method, required)
            if problem is not None:
                raise EngineBuildError(f"calibrating {fp32_path.name} gave ranges that are {problem}")
            try:
                atomic_write_bytes(ranges_path, local.read_bytes())
            except OSError as exc:
                raise calibration_cache_unwritable(ranges_path, exc) from None
    ranges = load_tensors_data(local)
    options = session_options()
    reference = onnxruntime.InferenceSession(str(fp32_path), options, providers=["CPUExecutionProvider"])
    tried: dict[str, float] = {}
    for scheme in schemes:
        out = workdir / f"{fp32_path.stem}.{scheme.name}.onnx"
        exclude = mismatched_concats(prepared, ranges) if "Concat" in scheme.op_types else []
        build(scheme, None, out, exclude, local)
        candidate = onnxruntime.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
        error = tried[scheme.name] = round(output_error(reference, candidate, check), 5)
        if error <= max_error:
            log.info("int8: %s uses scheme %s (error %.4f)", fp32_path.name, scheme.name, error)
            return onnx.load(str(out)), {
                "scheme": scheme.name,
                "op_types": list(scheme.op_types),
                "float_outputs": list(scheme.float_outputs),
                "float_concats": exclude,
                "errors": tried,
            }
    log.warning(
        "int8: no scheme keeps %s within %.2f of fp32 (%s); it stays fp32", fp32_path.name, max_error, tried
    )
    return onnx.load(str(fp32_path)), {"scheme": "float", "errors": tried}


def calibrated_tensors(model: onnx.ModelProto, op_types: Iterable[str]) -> set[str]:
    """The float tensors ONNX Runtime's calibrator records for ``op_types``: the non-constant
    inputs and outputs of those nodes (its ``select_tensors_to_calibrate`` on the shape-inferred
    graph). A reused ranges file must hold them all, or the quantiser would lack scales."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    infos = {v.name: v for v in (*graph.value_info, *graph.output, *graph.input)}
    constant = {t.name for t in graph.initializer}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    wanted = set(op_types)
    out = set()
    for node in graph.node:
        if node.op_type not in wanted:
            continue
        for name in (*node.input, *node.output):
            info = infos.get(name)
            if info is not None and name not in constant and info.type.tensor_type.elem_type in floats:
                out.add(name)
    return out


def _ranges_problem(path: Path, method: Any, required: Iterable[str] = ()) -> str | None:
    """Why the ranges file at ``path`` cannot be reused (None when it can): a write cut short,
    an edit, another calibration method, or ranges of another graph (tensors it lacks)."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    try:
        ranges = load_tensors_data(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        return f"corrupt ({type(exc).__name__}: {exc})"
    if ranges.calibration_method != method:
        return f"from another calibration method ({ranges.calibration_method}, expected {method})"
    missing = sorted(set(required) - set(ranges.keys()))
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        return f"missing {len(missing)} of the {len(set(required))} tensors this graph calibrates ({shown})"
    return None


def _guard_problem(sidecar: Mapping[str, Any]) -> str | None:
    record = sidecar.get("quantization")
    guard = record.get("guard") if isinstance(record, Mapping) else None  # a hand-edited sidecar: stale
    return None if guard == GUARD else f"built under another accuracy guard ({guard!r}, this one: {GUARD})"


def ensure_int8_onnx(
    model: StagedSegmenter,
    fp32: OnnxStages,
    cache: ArtifactCache,
    *,
    reference: Any,
    calibration: CalibrationList | None,
    flavour: str = "cpu",
    key: ArtifactKey | None = None,
    ranges_dir: Path | None = None,
) -> OnnxStages:
    """QDQ stage graphs from the cache, or quantised now from ``calibration`` frames.

    ``reference`` is a zero-argument callable returning an fp32 engine (built only if needed)
    that supplies the deep and head stages' calibration inputs. The calibrated ranges are kept
    in ``ranges_dir`` (default: calibration/cache/), so the other flavour reuses them.
    """
    ranges_dir = ranges_dir or default_calibration_dir() / "cache"
    if key is None:
        if calibration is None:
            raise ConfigError("int8 needs a calibration list (rtseg calibrate) or an existing int8 artifact")
        key = int8_key(fp32, calibration, flavour)
    depends_on = int8_depends_on(fp32, key.variant[:-1], flavour)

    def build(todo: tuple[str, ...]) -> dict[str, tuple[bytes, dict[str, Any]]]:
        if calibration is None:
            raise ConfigError(
                f"the int8 artifacts {key.stem}.{{{','.join(todo)}}}.onnx are missing, invalid, built "
                f"from other fp32 graphs or settings, or built under another accuracy guard (this "
                f"one: {GUARD}; the engine cache's warning above says which), and no calibration "
                "list was given to rebuild them: pass it (--calibration) or run `rtseg calibrate` again"
            )
        engine = reference()
        out = {}
        with tempfile.TemporaryDirectory(prefix="rtseg-quant-") as tmp:
            for stage in todo:
                proto_in = onnx.load(str(fp32.files[stage]), load_external_data=False)
                inputs = tuple(i["name"] for i in graph_io(proto_in)["inputs"])
                frames = calibration.frames(key.input_size)
                feeds = stage_feeds(engine, frames, stage, inputs)
                log.info(
                    "int8: calibrating stage %s on %d frames (%s flavour)", stage, len(calibration), flavour
                )
                ranges = shared_ranges_path(ranges_dir, fp32, calibration, stage)
                proto, report = quantize_graph(
                    fp32.files[stage], feeds, flavour=flavour, workdir=Path(tmp), ranges_path=ranges
                )
                report["ranges"] = ranges.name
                metadata = {
                    **common_metadata(model, key),
                    "stage": stage,
                    "io": graph_io(proto),
                    "quantization": {
                        "flavour": flavour,
                        "method": f"Percentile {PERCENTILE}",
                        "format": "QDQ",
                        "per_channel": True,
                        "max_relative_error": MAX_RELATIVE_ERROR,
                        "guard": GUARD,
                        **report,
                        "calibration_id": calibration.id,
                        "calibration_frames": len(calibration),
                        "calibration_source": f"{calibration.kind}: {calibration.source}",
                    },
                    "fp32_source": fp32.files[stage].name,
                    "depends_on": depends_on,  # what the key's ``source`` digests
                }
                set_metadata(proto, metadata)
                out[stage] = (serialize(proto), metadata)
        return out

    artifacts = cache.get_or_build(key, STAGES, "onnx", build, check=_guard_problem)
    return OnnxStages(
        key=key,
        files={s: a.path for s, a in artifacts.items()},
        head_low_inputs=fp32.head_low_inputs,
        sidecars={s: a.sidecar for s, a in artifacts.items()},
    )


def find_int8_keys(fp32: OnnxStages, cache: ArtifactCache, flavour: str) -> list[ArtifactKey]:
    """Int8 artifacts already in the cache for these fp32 graphs (one per calibration list).

    The keys are those the current fp32 graphs would give: a build from another export is
    found too, and then reported stale (it needs its calibration list to be rebuilt)."""
    import onnxruntime

    k = fp32.key
    suffix = "s" if flavour == "tensorrt" else "u"
    keys = []
    # As ArtifactKey.stem names files: espnet-c's are espnet_c-...; the raw name found none of them.
    w, h = k.input_size
    pattern = f"{file_safe(k.model)}-{file_safe(k.weights)}-{w}x{h}-int8_*{suffix}-onnx-any-*.low.onnx"
    for path in cache.find(pattern):
        variant = path.name.split("-int8_", 1)[1].split("-", 1)[0]
        library = path.name.rsplit("-", 1)[1][: -len(".low.onnx")]
        if library != f"ort{onnxruntime.__version__}":
            continue
        keys.append(int8_key(fp32, variant[: -len(suffix)], flavour))
    return keys
