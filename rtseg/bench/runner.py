"""A sweep: every combination of the options given, each measured in a fresh process by default.

With more than one scheduler the sweep is a scheduler comparison: for each engine (model,
backend, precision, size) the schedulers run over exactly the same frames, ``every`` first, and
each other scheduler's labels are scored against ``every``'s (agreement). The engine-only timing
does not depend on the scheduler, so it is measured once per engine, with the first scheduler;
an engine-only sweep (``pipeline=False``) takes one scheduler, as there is nothing to compare.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..terminal import progress_bar
from .measure import DEFAULT_SOURCE, BenchConfig, run_config
from .stats import StopRule
from .worker import run_isolated

Size = tuple[int, int] | None


@dataclass(frozen=True)
class SweepSpec:
    models: tuple[str, ...]
    backends: tuple[str, ...] = ("torch",)
    precisions: tuple[str, ...] = ("fp32",)
    sizes: tuple[Size, ...] = (None,)
    schedulers: tuple[str, ...] = ("every",)
    source: str = DEFAULT_SOURCE
    weights: str | None = None
    warmup: int = 5
    rule: StopRule = field(default_factory=StopRule)
    device: str | None = None  # None: each backend's default (BenchConfig)
    threads: int | None = None
    encode: str = "jpeg"
    engine: bool = True
    pipeline: bool = True

    def __post_init__(self) -> None:
        for name in ("models", "backends", "precisions", "sizes", "schedulers"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"SweepSpec.{name} must not be empty")
            if len(set(values)) != len(values):
                raise ConfigError(f"SweepSpec.{name} lists a value twice: {list(values)}")
        if not self.pipeline and len(self.schedulers) > 1:
            # Engine-only timing runs the engine alone: every scheduler would time the same engine
            # again under its own name, and the noise between the runs would read as its effect.
            raise ConfigError(
                "--engine-only times the engine alone, which does not depend on the scheduler: "
                f"give one --scheduler, or drop --engine-only to compare them end to end "
                f"(got --scheduler {' '.join(self.schedulers)})"
            )
        if self.weights is not None and len(self.models) != 1:
            raise ConfigError(
                f"--weights applies to one model, but {len(self.models)} were given "
                f"({', '.join(self.models)})"
            )

    @property
    def compare(self) -> bool:
        """Several schedulers end to end: run them over the same frames and score agreement."""
        return self.pipeline and len(self.schedulers) > 1


@dataclass(frozen=True)
class Planned:
    config: BenchConfig
    notes: tuple[str, ...] = ()


def plan(spec: SweepSpec, workdir: Path) -> list[Planned]:
    """The configurations of a sweep, in the order they run."""
    schedulers = list(spec.schedulers)
    if spec.compare and "every" in schedulers:
        schedulers.remove("every")
        schedulers.insert(0, "every")
    out: list[Planned] = []
    combos = itertools.product(spec.models, spec.backends, spec.precisions, spec.sizes)
    for i, (model, backend, precision, size) in enumerate(combos):
        reference = str(workdir / f"every-{i}.npz") if spec.compare and "every" in schedulers else None
        first_label = None
        for k, scheduler in enumerate(schedulers):
            notes: list[str] = []
            measure_engine = spec.engine and (k == 0 or not spec.compare)
            cfg = BenchConfig(
                model=model,
                backend=backend,
                precision=precision,
                size=size,
                scheduler=scheduler,
                source=spec.source,
                weights=spec.weights,
                device=spec.device,
                threads=spec.threads,
                warmup=spec.warmup,
                rule=spec.rule,
                engine=measure_engine,
                pipeline=spec.pipeline,
                fixed_frames=spec.compare,
                encode=spec.encode,
                reference_out=reference if scheduler == "every" else None,
                reference_in=reference if scheduler != "every" else None,
            )
            if k == 0:
                first_label = cfg.label
            elif spec.engine and spec.compare:
                notes.append(f"engine-only timing is the same engine's: see '{first_label}'")
            if spec.compare and reference is None:
                notes.append("agreement with every needs 'every' among --scheduler")
            out.append(Planned(cfg, tuple(notes)))
    return out


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep, with the results of the configurations that finished before it."""

    def __init__(self, results: list[dict[str, Any]]) -> None:
        super().__init__(f"interrupted after {len(results)} configuration(s)")
        self.results = results


def run_planned(
    planned: Sequence[Planned],
    *,
    isolated: bool = True,
    progress: bool = True,
    runner: Callable[[BenchConfig], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Measure each configuration in order (``runner`` replaces the measurement, for tests)."""
    measure = runner or (run_isolated if isolated else run_config)
    results = []
    # the line per configuration is printed whether or not the bar is drawn
    bar = progress_bar(planned, progress=progress, desc="rtseg bench", unit="config")
    for item in bar:
        bar.set_postfix_str(item.config.label)
        try:
            result = measure(item.config)
        except KeyboardInterrupt:
            raise SweepInterrupted(results) from None
        result["notes"] = [*result.get("notes", []), *item.notes]
        if result.get("memory"):
            # Sampled RSS is the whole process's: in this one it keeps what earlier
            # configurations (and the bench command) left allocated; a fresh one measures each alone.
            result["memory"]["in_process"] = not isolated
        results.append(result)
        if progress:
            bar.write(one_line(result), file=sys.stderr)
    return results


def run_sweep(spec: SweepSpec, *, isolated: bool = True, progress: bool = True) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="rtseg-bench-") as tmp:
        return run_planned(plan(spec, Path(tmp)), isolated=isolated, progress=progress)


def one_line(result: dict[str, Any]) -> str:
    """A short progress line for one finished configuration."""
    if result["status"] != "ok":
        return f"  {result['label']}: {result['status']}: {result['reason']}"
    parts = []
    if result.get("engine"):
        e = result["engine"]
        parts.append(f"engine {e['fps']:.2f} FPS ({e['latency_ms']['median']:.1f} ms, {e['stop']})")
    if result.get("pipeline"):
        p = result["pipeline"]
        fps = "n/a" if p["fps"] is None else f"{p['fps']:.2f}"
        parts.append(f"end-to-end {fps} FPS over {p['frames']} frames ({p['stop']})")
    return f"  {result['label']}: " + ", ".join(parts)
