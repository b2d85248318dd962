"""``backend="auto"``: time every available backend once, remember the fastest, reuse the choice.

No backend wins everywhere on CPUs (ENet-like graphs favour torch channels_last, convolution-heavy
ones ONNX Runtime), so the choice is measured per model, weights, input size, precision and
device, with the candidates interleaved (one run of each in turn) so that a noisy machine slows
them alike. The result is stored in the engine cache as ``auto-<...>.json`` together with the
library versions and the hardware (``rtseg.hardware.signature``) it was measured on; a later
``load`` on the same software and hardware reads it and builds only the winner.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..atomic import atomic_write_text
from ..errors import BackendUnavailableError, ConfigError, EngineBuildError
from ..hardware import signature
from ..models.base import StagedSegmenter
from .backends import ALL_PRECISIONS, BACKEND_OPTIONS
from .base import Engine
from .cache import ArtifactCache, CacheUnwritableError, weights_hash
from .calibration import CalibrationList

log = logging.getLogger(__name__)

CHOICE_FORMAT = "rtseg.auto-choice"


@dataclass(frozen=True)
class Candidate:
    """A backend plus the options that make it a distinct contender (e.g. channels_last)."""

    backend: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        flags = [k if v is True else f"{k}={v}" for k, v in sorted(self.options.items())]
        return " ".join([self.backend, *flags])

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "options": dict(self.options)}


def candidates(precision: str, device: str) -> list[Candidate]:
    """What ``auto`` compares for a precision and device (unavailable ones are skipped later)."""
    gpu = device.startswith("cuda")
    if precision == "fp32":
        if gpu:
            return [Candidate("torch"), Candidate("tensorrt"), Candidate("onnxruntime")]
        return [
            Candidate("torch"),
            Candidate("torch", {"channels_last": True}),
            Candidate("onnxruntime"),
            Candidate("openvino"),
        ]
    if precision == "fp16":
        return [Candidate("torch"), Candidate("tensorrt")] if gpu else [Candidate("openvino")]
    if precision == "int8":
        return [Candidate("tensorrt")] if gpu else [Candidate("onnxruntime"), Candidate("openvino")]
    if precision == "bf16":
        return [Candidate("openvino")]
    raise ConfigError(
        f"unknown precision {precision!r}; choose {', '.join(ALL_PRECISIONS[:-1])} or {ALL_PRECISIONS[-1]}"
    )


def libraries() -> dict[str, str]:
    """Versions of every backend library present: a change invalidates a stored choice."""
    from .openvino_backend import import_openvino  # imports openvino without its telemetry

    found = {"torch": torch.__version__, "rtseg": __version__}
    for name, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino"), ("tensorrt", "tensorrt")):
        try:
            mod = import_openvino() if name == "openvino" else __import__(module)
        except (ImportError, BackendUnavailableError):
            continue
        version = getattr(mod, "__version__", None) or getattr(mod, "get_version", lambda: "?")()
        found[name] = str(version)
    return found


def choice_path(
    cache: ArtifactCache,
    net: StagedSegmenter,
    wh: str,
    size: tuple[int, int],
    precision: str,
    device: str,
    threads: int | None = None,
) -> Path:
    """Where the choice is stored: one per thread count asked for, since a choice made with one
    thread does not hold for two."""
    w, h = size
    t = f"-threads{threads}" if threads is not None else ""
    return (
        cache.directory / f"auto-{net.meta.model}-{wh}-{w}x{h}-{precision}-{device.replace(':', '')}{t}.json"
    )


def incomparable(candidate: Candidate, device: str, options: Mapping[str, Any]) -> str | None:
    """Why a candidate cannot be timed fairly against the others with these options, or None.
    torch has no thread count of its own (torch.set_num_threads is the whole process's): asked
    for threads=1, the others ran on one thread and torch on every core."""
    threads, own = options.get("threads"), torch.get_num_threads()
    if candidate.backend == "torch" and device == "cpu" and threads is not None and threads != own:
        return (
            f"runs on torch's process-wide {own} thread(s), not threads={threads} "
            "(torch.set_num_threads); not comparable"
        )
    return None


def time_round_robin(
    runners: Mapping[str, Callable[[], Any]], *, runs: int, warmup: int
) -> dict[str, list[float]]:
    """Milliseconds per call of each runner, interleaved round robin after ``warmup`` calls each:
    a noisy machine's drift then hits every runner alike."""
    if runs <= 0:
        raise ConfigError(f"timing runs must be positive, got {runs}")
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(runs):
        for label, run in runners.items():
            start = time.perf_counter()
            run()
            times[label].append(1000 * (time.perf_counter() - start))
    return times


def time_engines(engines: Mapping[str, Engine], *, runs: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per ``run`` of a full pass for each engine, on one random frame, round robin."""
    some = next(iter(engines.values()))
    w, h = some.input_size
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    runners = {label: functools.partial(engine.run, image) for label, engine in engines.items()}
    return time_round_robin(runners, runs=runs, warmup=warmup)


def pick(times: Mapping[str, list[float]]) -> tuple[str, dict[str, float]]:
    """The label with the lowest median time (robust to a few slow runs), and every median."""
    if not times:
        raise ConfigError("auto: nothing was timed")
    medians = {label: statistics.median(v) for label, v in times.items()}
    return min(medians, key=medians.__getitem__), medians


def options_for(candidate: Candidate, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options among ``options`` (plus the candidate's own) that its backend takes."""
    accepted = BACKEND_OPTIONS.get(candidate.backend, ())
    return {k: v for k, v in {**options, **candidate.options}.items() if k in accepted}


def _read_choice(path: Path, device: str) -> Candidate | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # truncated by a full disk, edited, unreadable
        log.warning("auto: cannot read %s (%s); measuring again", path.name, exc)
        return None
    if not isinstance(data, dict) or data.get("format") != CHOICE_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        log.warning(
            "auto: %s is not a stored choice of this rtseg (format %r, not %r); measuring again",
            path.name,
            got,
            CHOICE_FORMAT,
        )
        return None
    backend = data.get("backend")
    if (
        not isinstance(backend, str)
        or backend not in BACKEND_OPTIONS
        or not isinstance(data.get("options", {}), dict)
    ):
        log.warning("auto: %s holds no usable backend choice (corrupt?); measuring again", path.name)
        return None
    if data.get("libraries") != libraries():
        log.info("auto: %s was measured with other library versions; measuring again", path.name)
        return None
    here = signature(device)
    if data.get("hardware") != here:
        log.info(
            "auto: %s was measured on other hardware (%s, not %s); measuring again",
            path.name,
            _describe(data.get("hardware")),
            _describe(here),
        )
        return None
    return Candidate(data["backend"], data.get("options", {}))


def _describe(hardware: Any) -> str:
    if not isinstance(hardware, dict):
        return "unrecorded"
    # Only for a log line: a hand-edited record (fields of other types) is described, not a crash.
    flags = hardware.get("flags")
    flags = "/".join(map(str, flags)) if isinstance(flags, list) and flags else "no listed flags"
    gpu = f", {hardware['gpu']}" if hardware.get("gpu") else ""
    cores = hardware.get("cores")
    cores = cores if isinstance(cores, list) and cores else ["?", "?"]
    return f"{hardware.get('cpu', '?')} [{flags}], {cores[0]}/{cores[-1]} cores{gpu}"


def load_auto(
    net: StagedSegmenter,
    *,
    size: tuple[int, int],
    precision: str,
    device: str,
    cache: ArtifactCache,
    calibration: CalibrationList | None = None,
    runs: int = 10,
    warmup: int = 3,
    remeasure: bool = False,
    **options: Any,
) -> Engine:
    """The stored choice's engine, or measure all candidates now, store the choice and return it."""
    from . import load_backend, with_note

    known = {name for names in BACKEND_OPTIONS.values() for name in names}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"auto: unknown backend options {unknown}; the backends take {', '.join(sorted(known))}"
        )
    wh = weights_hash(net)
    path = choice_path(cache, net, wh, size, precision, device, options.get("threads"))
    stored = None if remeasure else _read_choice(path, device)
    if stored is not None:
        engine = load_backend(
            net,
            backend=stored.backend,
            size=size,
            precision=precision,
            device=device,
            cache=cache,
            calibration=calibration,
            wh=wh,
            **options_for(stored, options),
        )
        log.info("auto: using %s (measured before, %s)", stored.label, path.name)
        return with_note(engine, f"auto: {stored.label} (stored choice)")

    engines: dict[str, Engine] = {}
    chosen: dict[str, Candidate] = {}
    skipped: dict[str, str] = {}
    unwritable = ""  # why a candidate could not write its artifacts: then the choice is not stored
    for candidate in candidates(precision, device):
        why = incomparable(candidate, device, options)
        if why is not None:
            skipped[candidate.label] = why
            log.info("auto: skipping %s: %s", candidate.label, why)
            continue
        opts = options_for(candidate, options)
        try:
            engine = load_backend(
                net,
                backend=candidate.backend,
                size=size,
                precision=precision,
                device=device,
                cache=cache,
                calibration=calibration,
                wh=wh,
                **opts,
            )
        except (BackendUnavailableError, EngineBuildError, ConfigError) as exc:
            skipped[candidate.label] = str(exc).splitlines()[0]
            log.info("auto: skipping %s: %s", candidate.label, skipped[candidate.label])
            if isinstance(exc, CacheUnwritableError):
                unwritable = exc.reason
            continue
        engines[candidate.label] = engine
        chosen[candidate.label] = candidate
    if not engines:
        raise BackendUnavailableError(
            f"auto: no backend can run {net.meta.model} at {precision} on {device}: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    times = time_engines(engines, runs=runs, warmup=warmup)
    best, medians = pick(times)
    others = ", ".join(
        f"{label} {ms:.1f} ms" for label, ms in sorted(medians.items(), key=lambda kv: kv[1]) if label != best
    )
    summary = f"auto: picked {best} ({medians[best]:.1f} ms" + (f" vs {others})" if others else ")")
    log.info("%s", summary)
    record = {
        "format": CHOICE_FORMAT,
        **chosen[best].to_dict(),
        "model": net.meta.model,
        "weights": wh,
        "input_size": list(size),
        "precision": precision,
        "device": device,
        "median_ms": {k: round(v, 3) for k, v in medians.items()},
        "runs": runs,
        "warmup": warmup,
        "skipped": skipped,
        "libraries": libraries(),
        "hardware": signature(device),
        "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    # A full disk or a read-only cache is not what a backend is, so a choice made while one kept a
    # candidate out is not stored; nor must failing to store it lose the engine just measured.
    not_stored = f"{unwritable}, so not every candidate ran" if unwritable else ""
    if not not_stored:
        try:
            atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True))
        except OSError as exc:
            not_stored = str(exc.strerror or exc)
    if not_stored:
        log.warning(
            "auto: cannot store the choice in %s (%s); the next load measures again", path, not_stored
        )
        summary += f"; not stored: {not_stored}"
    for label, engine in engines.items():
        if label != best:
            engine.close()
    return with_note(engines[best], summary)
