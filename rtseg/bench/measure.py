"""Measuring one configuration: the engine alone, then the real pipeline end to end.

Engine-only: ``engine.run`` on one preprocessed frame (uint8 at the engine's input size), after
``warmup`` untimed runs, until the stop rule ends it (``stats.StopRule``). FPS = 1000 / median ms.

End to end: ``source -> Segmenter(scheduler) -> overlay -> null sink`` through ``rtseg.Pipeline``.
The first ``warmup`` frames are processed but not counted. Per measured frame it records:
  capture      reading the frame from the source (decode or render);
  preprocess   the Segmenter's resize to the engine input;
  low/deep/head  the engine stages (head includes the argmax to uint8 labels); deep runs on
               keyframes only; change/warp are the scheduler's own costs where it has them;
  postprocess  the label map brought to frame resolution (nearest), as a consumer of full-size
               labels does (timed in the result callback, on the inference thread);
  overlay      colourising and blending, on the sink's thread;
  encode       JPEG (quality 80) of the overlay on the sink's thread, as a streaming output
               does (``encode="none"`` skips it); the bytes are discarded;
and the latency from the frame's read (decoded, at frame size; after "capture") to its labels at
frame size (after "postprocess"), without overlay and encode. The agreement with a reference run
(``every``'s labels) is scored over the measured frames after the run, not in the result callback:
the callback runs on the inference thread between frames, and a confusion matrix over the full
label map (2 to 5 ms) there would be counted in every other scheduler's frame interval. Stage
figures are medians over the frames where the stage ran plus the mean cost per frame (which is
what throughput pays: deep on keyframes only). FPS is measured frames / wall time between the
first and last measured results. The stop rule is applied to the frame-to-frame interval, except
with ``fixed_frames`` (scheduler comparisons): then every scheduler sees exactly the same
``max_samples`` frames, so agreement can be scored frame by frame.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..data.labels import ClassSet
from ..engine.backends import default_device
from ..errors import BackendUnavailableError, CheckpointError, ConfigError, RtsegError
from ..metrics import ConfusionMatrix
from ..models import get_model
from ..result import SegResult, labels_at
from ..schedule import SCHEDULERS
from ..sink.null import NullSink
from ..sink.packet import Packet
from ..source import Frame, Source, open_source, redacted
from ..source.base import scrubbed
from .stats import StopRule, summarize
from .weights import choose_weights

DEFAULT_SOURCE = "synthetic://drive?size=1280x720&fps=30&seed=0"
ENCODINGS = ("jpeg", "none")
STAGES = (
    "capture",
    "preprocess",
    "low",
    "change",
    "deep",
    "warp",
    "head",
    "postprocess",
    "overlay",
    "encode",
)
# Failures that mean "this combination cannot run here", reported as skipped rather than failed.
SKIP_ERRORS = (ConfigError, BackendUnavailableError, CheckpointError)


@dataclass(frozen=True)
class BenchConfig:
    """One point of a sweep. ``size`` None means the size the weights were trained at."""

    model: str
    backend: str = "torch"
    precision: str = "fp32"
    size: tuple[int, int] | None = None
    scheduler: str = "every"
    source: str = DEFAULT_SOURCE
    weights: str | None = None  # an explicit checkpoint; None: real weights if the data folder has them
    device: str | None = None  # None: engine.backends.default_device for the backend
    threads: int | None = None  # torch intra-op threads; None: leave the process setting alone
    warmup: int = 5
    rule: StopRule = field(default_factory=StopRule)
    engine: bool = True  # measure engine-only
    pipeline: bool = True  # measure end to end
    fixed_frames: bool = False  # end to end: exactly rule.max_samples frames (scheduler comparisons)
    encode: str = "jpeg"
    reference_out: str | None = None  # write this run's labels here (.npz), for agreement scores
    reference_in: str | None = None  # score this run's labels against these

    def __post_init__(self) -> None:
        if self.device is None:  # recorded as the device the engine is loaded on
            object.__setattr__(self, "device", default_device(self.backend))
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"BenchConfig.scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.warmup < 0:
            raise ConfigError(f"BenchConfig.warmup must be >= 0, got {self.warmup}")
        if self.encode not in ENCODINGS:
            raise ConfigError(f"BenchConfig.encode must be one of {ENCODINGS}, got {self.encode!r}")
        if not (self.engine or self.pipeline):
            raise ConfigError("BenchConfig: measure the engine, the pipeline or both (both are off)")
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise ConfigError(f"BenchConfig.size must be (width, height) > 0, got {self.size!r}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"BenchConfig.threads must be >= 1, got {self.threads}")

    @property
    def label(self) -> str:
        size = "default" if self.size is None else f"{self.size[0]}x{self.size[1]}"
        return f"{self.model} {self.backend} {self.precision} {size} {self.scheduler}"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["size"] = None if self.size is None else list(self.size)
        data["rule"] = self.rule.to_dict()
        return data

    def to_record(self) -> dict[str, Any]:
        """``to_dict`` as results record it: the source URL's password and query values as ***
        (``redacted``); only the measuring worker, which opens the source, gets the real one."""
        return {**self.to_dict(), "source": redacted(self.source)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        data = dict(data)
        data["size"] = None if data.get("size") is None else tuple(data["size"])
        data["rule"] = StopRule.from_dict(data["rule"])
        return cls(**data)


class _MemoryMeter:
    """Peak resident memory while measuring (psutil samples), plus the process high-water mark.

    The label maps the benchmark keeps for agreement (the reference it scores against and the
    labels it scores after the run) are not the pipeline's memory: their bytes (``hold``) are
    taken off each sample, so a scheduler compared with ``every`` is not charged for them.
    """

    def __init__(self, device: str) -> None:
        try:
            import psutil

            self._process: Any = psutil.Process()
        except ImportError:
            self._process = None
        self.peak_rss = 0
        self.held = 0
        self.cuda = device.startswith("cuda") and torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def hold(self, nbytes: int) -> None:
        """Count ``nbytes`` more kept by the benchmark itself, left out of later samples."""
        self.held += nbytes

    def sample(self) -> None:
        if self._process is not None:
            self.peak_rss = max(self.peak_rss, self._process.memory_info().rss - self.held)

    def to_dict(self) -> dict[str, Any]:
        high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        high_water *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        # Linux updates the high-water mark lazily: it can lag an RSS psutil has already seen.
        high_water = max(high_water, self.peak_rss)
        return {
            "peak_rss_mib": round(self.peak_rss / 2**20, 1) if self.peak_rss else None,
            "process_peak_rss_mib": round(high_water / 2**20, 1),
            "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if self.cuda else None,
        }


def measure_engine(engine: Any, image: np.ndarray, warmup: int, rule: StopRule, memory: _MemoryMeter) -> dict:
    for _ in range(warmup):
        engine.run(image)
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        engine.run(image)
        samples.append((time.perf_counter() - t0) * 1000.0)
        memory.sample()
        reason = rule.reason_to_stop(samples, time.perf_counter() - start)
        if reason is not None:
            break
    summary = summarize(samples, rule.confidence)
    return {
        "fps": round(1000.0 / summary.median, 3),
        "latency_ms": summary.to_dict(),
        "frames": summary.n,
        "warmup": warmup,
        "stop": reason,
    }


class _TimedSource(Source):
    """Wraps an opened source and times each read (the pipeline's "capture")."""

    def __init__(self, inner: Source) -> None:
        super().__init__(inner.uri, inner.options)
        self.inner = inner
        self.info = inner.info
        self.capture_ms: list[float] = []

    def _next_frame(self) -> Frame | None:
        t0 = time.perf_counter()
        frame = next(self.inner, None)
        if frame is not None:
            self.capture_ms.append((time.perf_counter() - t0) * 1000.0)
        return frame

    def _release(self) -> None:
        self.inner.close()

    @property
    def stats(self):  # type: ignore[override]
        return self.inner.stats


class _TimedNullSink(NullSink):
    """``null://?overlay=1`` that also times the drawing (and an optional JPEG encode) per frame."""

    def __init__(self, *, encode: str, policy: Any) -> None:
        self.encode = encode
        self.overlay_ms: dict[int, float] = {}
        self.encode_ms: dict[int, float] = {}
        super().__init__("null://?overlay=1", draw=True, policy=policy)

    def emit(self, packet: Packet) -> None:
        t0 = time.perf_counter()
        image = packet.overlay()
        t1 = time.perf_counter()
        index = packet.frame.index
        self.overlay_ms[index] = (t1 - t0) * 1000.0
        if self.encode == "jpeg":
            cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
            self.encode_ms[index] = (time.perf_counter() - t1) * 1000.0


def _stage_table(per_frame: dict[str, list[float]], frames: int) -> dict[str, dict[str, Any]]:
    out = {}
    for stage in STAGES:
        values = per_frame.get(stage, [])
        if not values:
            continue
        out[stage] = {
            "median": round(float(np.median(values)), 3),
            "mean_per_frame": round(float(np.sum(values)) / max(frames, 1), 3),
            "frames": len(values),
        }
    return out


def measure_pipeline(segmenter: Any, cfg: BenchConfig, memory: _MemoryMeter) -> dict:
    from ..pipeline import Pipeline  # the pipeline pulls in sinks and sources: load on use

    rule = cfg.rule
    inner = open_source(cfg.source)
    source = _TimedSource(inner)
    policy = "drop" if inner.info.live else "block"
    sink = _TimedNullSink(encode=cfg.encode, policy=policy)
    reference = _load_reference(cfg.reference_in)
    if reference is not None:
        memory.hold(sum(labels.nbytes for labels in reference.values()))
    keep: dict[str, np.ndarray] = {}
    records: list[dict[str, Any]] = []
    cycles_ms: list[float] = []
    start = [0.0]
    stop_reason: list[str | None] = [None]

    def on_result(frame: Frame, result: SegResult) -> None:
        t0 = time.perf_counter()
        result.labels_at(frame.image.shape)  # timed only: what a consumer of full-size masks pays
        done = time.perf_counter()
        # Measured frames the reference has: only their labels are kept for scoring.
        scored = reference is not None and len(records) >= cfg.warmup and f"f{frame.index}" in reference
        records.append(
            {
                "index": frame.index,
                "done": done,
                "latency": (done - frame.monotonic) * 1000.0,
                "timings": dict(result.timings),
                "postprocess": (done - t0) * 1000.0,
                "key": result.is_keyframe,
                # Kept, not copied: the pipeline makes a new label map per frame and hands out
                # read-only views of it. Scored after the run (see the module docstring).
                "labels": result.labels if scored else None,
            }
        )
        if cfg.reference_out is not None:
            keep[f"f{frame.index}"] = result.labels
        if scored or cfg.reference_out is not None:
            memory.hold(result.labels.nbytes)  # kept once however many of the two hold it
        memory.sample()
        measured = len(records) - cfg.warmup
        if measured == 1:
            start[0] = done
        if measured < 1:
            return
        if cfg.fixed_frames:
            if measured >= rule.max_samples:
                stop_reason[0] = "max samples"
                pipeline.stop()
            return
        i = len(records) - 1
        if i >= max(cfg.warmup, 1):  # the interval since the previous result, for measured frames
            cycles_ms.append(1000.0 * (done - records[-2]["done"]))
        reason = rule.reason_to_stop(cycles_ms, done - start[0])
        if reason is None and measured >= rule.max_samples:
            reason = "max samples"  # without warm-up the first frame has no interval before it
        if reason is not None:
            stop_reason[0] = reason
            pipeline.stop()

    pipeline = Pipeline(source, segmenter, sinks=[sink], on_result=on_result)
    stats = pipeline.run()
    if cfg.reference_out is not None:
        Path(cfg.reference_out).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cfg.reference_out, **keep)
    measured = records[cfg.warmup :]
    n = len(measured)
    if n == 0:
        raise RtsegError(
            f"the source {redacted(cfg.source)!r} ended after {len(records)} frames, before the "
            f"{cfg.warmup} warm-up frames were over: use a longer source or fewer --warmup frames"
        )
    per_frame: dict[str, list[float]] = {s: [] for s in STAGES}
    capture = source.capture_ms
    for i, rec in enumerate(records):
        if i < cfg.warmup:
            continue
        if i < len(capture):
            per_frame["capture"].append(capture[i])
        for stage, ms in rec["timings"].items():
            per_frame.setdefault(stage, []).append(ms)
        per_frame["postprocess"].append(rec["postprocess"])
        if rec["index"] in sink.overlay_ms:
            per_frame["overlay"].append(sink.overlay_ms[rec["index"]])
        if rec["index"] in sink.encode_ms:
            per_frame["encode"].append(sink.encode_ms[rec["index"]])
    seconds = measured[-1]["done"] - measured[0]["done"]
    keyframes = sum(1 for r in measured if r["key"])
    out: dict[str, Any] = {
        "fps": round((n - 1) / seconds, 3) if n > 1 and seconds > 0 else None,
        "frames": n,
        "warmup": min(cfg.warmup, len(records)),
        "seconds": round(seconds, 3),
        "stop": stop_reason[0] or "source ended",
        "latency_ms": summarize([r["latency"] for r in measured], rule.confidence).to_dict(),
        "stages_ms": _stage_table(per_frame, n),
        "keyframes": keyframes,
        "keyframe_ratio": round(keyframes / n, 4),
        "scheduler": segmenter.scheduler.describe(),
        "source": {
            "uri": redacted(cfg.source),
            "kind": inner.info.kind,
            "size": None if inner.info.size is None else list(inner.info.size),
            "live": inner.info.live,
        },
        "sink": "null://?overlay=1" + (" + JPEG q80 encode" if cfg.encode == "jpeg" else ""),
        "dropped": {"source": stats.source_dropped, "sink": stats.sink_dropped},
        "agreement": None,
    }
    if reference is not None:
        out["agreement"] = score_agreement(measured, reference, segmenter.classes)
    return out


def short_phase_notes(result: dict[str, Any], rule: StopRule) -> list[str]:
    """A note for each phase that measured fewer frames than the rule's minimum (--min-frames),
    saying why: the source ended, or the time limit came first. Its median and percentiles rest on
    fewer samples than were asked for, which the 'ok' status and the stop reason did not say."""
    notes = []
    for key, phase_name, unit in (("engine", "engine-only", "runs"), ("pipeline", "end-to-end", "frames")):
        phase = result.get(key)
        if not phase or phase["frames"] >= rule.min_samples:
            continue
        if phase["stop"] == "source ended":
            why = (
                f"the source ended after {phase['frames'] + phase['warmup']} frames "
                f"({phase['warmup']} of them warm-up): use a longer source or fewer --warmup frames"
            )
        else:  # "time limit": a phase may stop there with as few as 3 samples
            why = f"the time limit per phase (--max-seconds {rule.max_seconds:g}) came first"
        measured = f"{phase['frames']} {unit} measured, fewer than --min-frames {rule.min_samples}"
        notes.append(f"{phase_name}: {measured}: {why}")
    return notes


def score_agreement(
    records: list[dict[str, Any]], reference: dict[str, np.ndarray], classes: ClassSet
) -> dict[str, Any] | None:
    """Agreement of the measured frames' labels with the reference's for the same frames (by
    index), at the reference's resolution; None when no frame is in the reference. Warm-up frames
    are left out, as they are of the FPS the agreement is weighed against."""
    agreement = ConfusionMatrix(len(classes), classes.ignore_index)
    compared = 0
    for rec in records:
        ref = reference.get(f"f{rec['index']}")
        if ref is None or rec["labels"] is None:
            continue
        agreement.update(ref, labels_at(rec["labels"], ref.shape))
        compared += 1
    if not compared:
        return None
    scores = agreement.result()
    return {
        "miou": round(100 * scores.miou, 2),
        "pixel_accuracy": round(100 * scores.pixel_accuracy, 2),
        "frames": compared,
        "reference": "every",
    }


def _load_reference(path: str | None) -> dict[str, np.ndarray] | None:
    if path is None:
        return None
    if not Path(path).is_file():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _first_frame(uri: str) -> np.ndarray:
    with open_source(uri) as src:
        frame = next(src, None)
    if frame is None:
        raise ConfigError(f"the source {redacted(uri)!r} delivered no frame")
    return frame.image


def run_config(cfg: BenchConfig) -> dict[str, Any]:
    """Measure one configuration; never raises for a combination that cannot run (it is skipped)."""
    from ..engine import load
    from ..engine.backends import BACKEND_OPTIONS
    from ..segmenter import Segmenter

    result: dict[str, Any] = {
        "label": cfg.label,
        "config": cfg.to_record(),
        "status": "ok",
        "reason": None,
        "notes": [],
        "weights": None,
        "engine_info": None,
        "threads": None,
        "setup_s": None,
        "engine": None,
        "pipeline": None,
        "memory": None,
    }
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    result["threads"] = torch.get_num_threads()
    memory = _MemoryMeter(cfg.device)
    try:
        choice = choose_weights(cfg.model, cfg.size, given=cfg.weights)
        result["weights"] = choice.to_dict()
        torch.manual_seed(0)  # random-init weights are the same in every run
        net = get_model(cfg.model, weights=choice.path)
        t0 = time.perf_counter()
        backend = cfg.backend
        # --threads holds for every backend, not only torch's intra-op pool
        takes = backend == "auto" or "threads" in BACKEND_OPTIONS.get(backend, ())
        threads = {"threads": cfg.threads} if cfg.threads is not None and takes else {}
        engine = load(
            net,
            backend=backend,
            precision=cfg.precision,
            input_size=cfg.size,
            device=cfg.device,
            **threads,
        )
        result["setup_s"] = round(time.perf_counter() - t0, 2)
    except SKIP_ERRORS as exc:
        return {**result, "status": "skipped", "reason": str(exc)}
    except Exception as exc:  # a broken build must not take the sweep down
        return {**result, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    info = engine.info
    if info.threads is not None:  # what the engine runs with (ONNX Runtime, OpenVINO pick their own)
        result["threads"] = info.threads
    result["engine_info"] = {
        "backend": info.backend,
        "library": info.library,
        "precision": info.precision,
        "device": info.device,
        "input_size": list(info.input_size),
        "notes": list(info.notes),
    }
    try:
        segmenter = Segmenter(engine=engine, scheduler=cfg.scheduler)
        try:
            if cfg.engine:
                image = segmenter.preprocess(_first_frame(cfg.source))
                result["engine"] = measure_engine(engine, image, cfg.warmup, cfg.rule, memory)
            if cfg.pipeline:
                result["pipeline"] = measure_pipeline(segmenter, cfg, memory)
        finally:
            segmenter.close()
            engine.close()  # the segmenter does not own it
        result["notes"] += short_phase_notes(result, cfg.rule)
    except Exception as exc:
        result["status"] = "failed"
        result["reason"] = scrubbed(f"{type(exc).__name__}: {exc}", cfg.source)  # an error may quote it
    result["memory"] = memory.to_dict()
    return result
