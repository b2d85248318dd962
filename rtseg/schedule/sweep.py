"""The keyframe-scheduling study on a sequence: the full threshold sweep, by exact replay.

Every schedule that uses ``deep`` from frame k for frame t produces ``head(low_t, deep_k)`` there,
whatever else it does; the adaptive rule only looks at change scores between pooled low features.
So the study runs ``low`` and ``deep`` once per frame, computes each (t, k) head once (t - k below
the maximum interval) and replays any schedule from those: the mIoU of a replayed schedule equals
the mIoU of running the scheduler (tests/schedule/test_sweep.py checks it against the real
schedulers). Only the frames a schedule can still keep are held, so a long drive fits. The
cost of a schedule is modelled from median stage times measured on the same frames:
``frames x (low + change + head [+ warp on reused frames]) + keyframes x deep``.

    python -m rtseg.schedule.sweep --root ../shared/data/camvid --weights ESPNET_CAMVID.pth --out docs

On footage without labels (``--source URI``: a video, an image folder) the every-frame labels
stand in for the ground truth, so every mIoU is the agreement with ``every``: enough to choose a
threshold on one's own footage, or to compare schedules on a second drive.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import camvid
from ..engine import load
from ..engine.backends import BACKEND_OPTIONS
from ..engine.base import Engine
from ..errors import ConfigError, DatasetError
from ..metrics import ConfusionMatrix
from ..result import labels_at
from ..terminal import progress_bar
from .calibrate import simulate_keyframes
from .change import ChangeMeasure, Summary
from .flow import FlowWarp
from .sequence import to_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Point:
    """One replayed schedule."""

    family: str  # "every", "clockwork", "adaptive ..." (with the variant)
    parameter: float  # interval or threshold
    keyframes: int
    frames: int
    miou: float  # against the ground truth, %
    agreement: float  # mIoU against the every-frame labels, %
    ms_per_frame: float  # modelled inference cost
    keys: tuple[int, ...] = ()  # the keyframes of a replayed adaptive schedule

    @property
    def ratio(self) -> float:
        return self.keyframes / self.frames


class Study:
    """One pass over a sequence: every head a schedule can use, scored, and the change scores the
    adaptive rules replay from.

    A schedule with maximum interval N uses ``deep`` from frame k for frame t only when
    t - k < N, so the pass holds the last N - 1 frames' images and deep features, not the
    sequence's: a long drive costs memory in its confusion matrices only (C x C per pair).
    Without ``labels`` the every-frame labels are the reference.
    """

    def __init__(
        self,
        engine: Engine,
        frames: Iterable[np.ndarray],
        labels: Sequence[np.ndarray] | None,
        max_interval: int,
        *,
        measures: Sequence[ChangeMeasure] = (),
        warp: bool = True,
    ) -> None:
        if max_interval < 1:
            raise ConfigError(f"max_interval must be at least 1, got {max_interval}")
        self.max_interval = max_interval
        self.warped = warp
        self.n_classes = len(engine.meta.classes)
        self.ignore = engine.meta.classes.ignore_index
        low_names = tuple(f.name for f in engine.stage_spec.low)
        self._measures = {m: m.resolve(low_names, engine.stage_spec.deep_inputs) for m in measures}
        # changes[measure][(t, k)]: frame t's score against frame k, for every k a schedule can keep
        self.changes: dict[ChangeMeasure, dict[tuple[int, int], float]] = {m: {} for m in measures}
        self.residuals: dict[tuple[int, int], float] = {}
        self._times: dict[str, list[float]] = {k: [] for k in ("low", "deep", "head", "flow", "residual")}
        self._times.update({"warp": []} if warp else {})
        self._change_s = dict.fromkeys(measures, 0.0)
        self._flow = FlowWarp()
        # (image, deep, summaries) of frames t - 1, t - 2, ...: the keyframes frame t can still use
        self._window: deque[tuple[np.ndarray, dict, list[Summary]]] = deque(maxlen=max_interval - 1)
        per_frame: list[np.ndarray] = []
        for t, image in enumerate(frames):
            if labels is not None and t >= len(labels):
                raise DatasetError(f"{len(labels)} label maps for a sequence of more frames")
            per_frame.append(self._add_frame(engine, t, image, None if labels is None else labels[t]))
        del self._window, self._flow  # the features of the last frames go with them
        if len(per_frame) < 2:
            raise DatasetError(f"the sequence gave {len(per_frame)} frame(s); a schedule needs two or more")
        if labels is not None and len(labels) != len(per_frame):
            raise DatasetError(f"{len(labels)} label maps for a sequence of {len(per_frame)} frames")
        self.frames = len(per_frame)
        self._pairs = np.stack(per_frame)
        self.stage_ms = {k: 1000 * float(np.median(self._times[k])) for k in ("low", "deep", "head")}
        self.step_ms = {k: 1000 * float(np.median(v)) if v else 0.0 for k, v in self._times.items()}
        # a frame's summary plus its distances to the frames it could keep: an upper bound
        self.change_ms = {m: 1000 * s / self.frames for m, s in self._change_s.items()}

    def _add_frame(self, engine: Engine, t: int, image: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
        """Frame t's confusion matrices: [age t - k][warped][against the reference, against every].

        The frame is resized to the engine's input and each head's labels to the ground truth's
        size as `rtseg eval --sequence` does (run_sequence, evaluate_sequence), so a replay
        scores like the real scheduler whatever the sizes.
        """
        image, _ = to_input(image, engine.input_size, engine.meta.preprocessing.interpolation)
        times = self._times
        t0 = time.perf_counter()
        low = engine.run_low(image)
        engine.synchronize()
        t1 = time.perf_counter()
        deep = engine.run_deep(low)
        engine.synchronize()
        t2 = time.perf_counter()
        every = engine.run_head(low, deep)[0]
        times["low"].append(t1 - t0)
        times["deep"].append(t2 - t1)
        times["head"].append(time.perf_counter() - t2)
        at_truth = (lambda labels: labels) if truth is None else partial(labels_at, shape=truth.shape)
        every = at_truth(every)
        truth = every if truth is None else truth
        summaries = []
        for m, name in self._measures.items():
            t0 = time.perf_counter()
            summaries.append(m.summarize(low[name]))
            self._change_s[m] += time.perf_counter() - t0
        # C x C counts: a frame's pixel count fits int32, and sums over frames widen to int64
        matrices = np.zeros((self.max_interval, 2, 2, self.n_classes, self.n_classes), np.int32)
        matrices[0, :] = self._matrices(truth, every, every)
        flow = self._flow
        for age, (key_image, key_deep, key_summaries) in enumerate(self._window, start=1):
            k = t - age
            for m, now, then in zip(self._measures, summaries, key_summaries, strict=True):
                t0 = time.perf_counter()
                self.changes[m][(t, k)] = m.distance(now, then)
                self._change_s[m] += time.perf_counter() - t0
            matrices[age, 0] = self._matrices(truth, every, at_truth(engine.run_head(low, key_deep)[0]))
            if not self.warped:
                continue
            t0 = time.perf_counter()
            flow.set_keyframe(key_image)
            t1 = time.perf_counter()
            flow.flow(image)
            t2 = time.perf_counter()
            self.residuals[(t, k)] = flow.residual(image)  # reuses the flow just computed
            t3 = time.perf_counter()
            warped = flow.warp(key_deep, image)  # and so does the warp
            t4 = time.perf_counter()
            times["flow"].append(t2 - t1)
            times["residual"].append(t3 - t2)
            times["warp"].append((t2 - t0) + (t4 - t3))  # a reused frame's flow and warp
            matrices[age, 1] = self._matrices(truth, every, at_truth(engine.run_head(low, warped)[0]))
        self._window.appendleft((image, deep, summaries))
        return matrices

    def _matrices(self, truth: np.ndarray, every: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
        out = []
        for reference in (truth, every):
            matrix = ConfusionMatrix(self.n_classes, self.ignore)
            matrix.update(reference, labels)
            out.append(matrix.matrix)
        return out

    def pair(self, t: int, k: int, warp: bool) -> tuple[np.ndarray, np.ndarray]:
        """Frame t's confusion matrices (against the reference, against ``every``) from k's deep."""
        if not 0 <= t - k < self.max_interval or not 0 <= k <= t < self.frames:
            raise ValueError(
                f"no head for frame {t} from keyframe {k}: the study holds frames 0..{self.frames - 1} "
                f"and keyframes up to {self.max_interval - 1} frames back"
            )
        self._check_warp(warp)
        m = self._pairs[t, t - k, int(warp)]
        return m[0], m[1]

    def _check_warp(self, warp: bool) -> None:
        if warp and not self.warped:
            raise ValueError("this study was run without the flow warp")

    @property
    def warp_ms(self) -> float:
        return self.step_ms.get("warp", 0.0)

    def frame_matrices(self, keys: Sequence[int], warp: bool) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame confusion matrices (frames x C x C) against the reference and ``every``."""
        self._check_warp(warp)
        if not keys or keys[0] != 0:
            raise ValueError(f"a schedule's first keyframe is frame 0, got {list(keys[:1])}")
        last = np.zeros(self.frames, np.int64)
        last[np.asarray(keys, np.int64)] = keys
        last = np.maximum.accumulate(last)
        ages = np.arange(self.frames) - last
        if ages.max() >= self.max_interval:
            raise ValueError(
                f"a schedule keeps deep features {ages.max()} frames; the study holds up to "
                f"{self.max_interval - 1} (its maximum interval {self.max_interval})"
            )
        m = self._pairs[np.arange(self.frames), ages, int(warp)]
        return m[:, 0], m[:, 1]

    def score(self, keys: Sequence[int], warp: bool) -> tuple[float, float]:
        gt, ag = self.frame_matrices(keys, warp)
        return _miou(gt.sum(0)), _miou(ag.sum(0))

    def cost(self, keyframes: int, extra_ms: float, warp: bool) -> float:
        n = self.frames
        s = self.stage_ms
        reused = n - keyframes
        total = (
            n * (s["low"] + s["head"] + extra_ms)
            + keyframes * s["deep"]
            + (reused * self.warp_ms if warp else 0)
        )
        return total / n


def _miou(matrix: np.ndarray) -> float:
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    valid = union > 0
    return float(100 * np.mean(tp[valid] / union[valid]))


def clockwork_keys(n: int, interval: int, phase: int = 0) -> list[int]:
    """Frame 0 (nothing is cached before it), then every ``interval`` frames from ``phase`` on."""
    return sorted({0, *range(phase, n, interval)})


@dataclass(frozen=True)
class Gain:
    """Adaptive minus clockwork mIoU at one keyframe count, with what the sequence resolves."""

    interval: int
    keyframes: int
    gain: float  # mean adaptive mIoU (over its schedules with this count) - clockwork's, points
    low: float  # 95 % block-bootstrap interval of the gain
    high: float
    phases: tuple[float, ...]  # clockwork mIoU at each phase that gives the same keyframe count


def paired_gain(
    study: Study,
    adaptive: Sequence[Sequence[int]],
    interval: int,
    warp: bool,
    *,
    block: int = 10,
    rounds: int = 2000,
    seed: int = 0,
) -> Gain:
    """How far the adaptive schedules beat clockwork, and how sure this one sequence can be of it.

    Both schedules are scored on the same resampled frames: blocks of ``block`` consecutive
    frames drawn with replacement (a moving-block bootstrap, because neighbouring frames share
    their errors). Clockwork's other phases show the spread of a fixed rate whose keyframes fall
    on different frames of the same drive.
    """
    n = study.frames
    reference = clockwork_keys(n, interval)
    if not adaptive or any(len(keys) != len(reference) for keys in adaptive):
        raise ValueError(
            f"adaptive schedules must each have {len(reference)} keyframes, like clockwork {interval}"
        )
    cw = study.frame_matrices(reference, warp)[0]
    ad = [study.frame_matrices(keys, warp)[0] for keys in adaptive]
    rng = np.random.default_rng(seed)
    block = min(block, n)
    starts = rng.integers(0, n - block + 1, size=(rounds, -(-n // block)))
    gains = np.empty(rounds)
    for r, row in enumerate(starts):
        idx = (row[:, None] + np.arange(block)).ravel()[:n]
        gains[r] = np.mean([_miou(a[idx].sum(0)) for a in ad]) - _miou(cw[idx].sum(0))
    full = float(np.mean([_miou(a.sum(0)) for a in ad]) - _miou(cw.sum(0)))
    phases = tuple(
        study.score(keys, warp)[0]
        for keys in (clockwork_keys(n, interval, p) for p in range(interval))
        if len(keys) == len(reference)
    )
    low, high = np.percentile(gains, [2.5, 97.5])
    return Gain(interval, len(reference), full, float(low), float(high), phases)


# Not a runnable schedule: the adaptive rule on the true error of each cached frame (oracle_curve).
ORACLE = "oracle: true cache error + warp"


def threshold_curve(
    study: Study,
    changes: dict[tuple[int, int], float],
    family: str,
    warp: bool,
    extra_ms: Callable[[int], float],
) -> list[Point]:
    """The schedules the adaptive rule makes from ``changes`` over every threshold that matters;
    ``extra_ms(keyframes)`` is the per-frame cost of the score.

    One point per keyframe set. Each set comes from one interval of thresholds (its keyframes'
    scores above T and the other frames' at or below it bound T on both sides); ``parameter`` is
    the interval's lowest threshold, so a threshold T gives the schedule of the point with the
    largest parameter <= T (``at_threshold``).
    """
    n = study.frames
    points: list[Point] = []
    for threshold in sorted(set(changes.values()) | {0.0}, reverse=True):
        keys = tuple(simulate_keyframes(changes, n, threshold, study.max_interval))
        if points and points[-1].keys == keys:  # the same schedule down to a lower threshold
            points[-1] = dataclasses.replace(points[-1], parameter=threshold)
            continue
        miou, agreement = study.score(keys, warp)
        cost = study.cost(len(keys), extra_ms(len(keys)), warp)
        points.append(Point(family, threshold, len(keys), n, miou, agreement, cost, keys))
    return sorted(points, key=lambda p: p.keyframes)


def gains_over_clockwork(study: Study, points: Sequence[Point], family: str, warp: bool) -> list[Gain]:
    """``paired_gain`` at every clockwork interval that some schedule of ``family`` matches."""
    n = study.frames
    out = []
    for interval in range(2, study.max_interval + 1):
        count = len(clockwork_keys(n, interval))
        same = [p.keys for p in points if p.family == family and p.keyframes == count]
        if same:
            out.append(paired_gain(study, same, interval, warp))
    return out


def adaptive_curve(study: Study, measure: ChangeMeasure, warp: bool, family: str) -> list[Point]:
    """The adaptive rule on the pooled feature change (``change.py``)."""
    return threshold_curve(study, study.changes[measure], family, warp, lambda _: study.change_ms[measure])


def residual_curve(study: Study, family: str) -> list[Point]:
    """Adaptive on the motion-compensated change (``FlowWarp.residual``), with the warp."""
    n = study.frames
    f_ms, r_ms = study.step_ms["flow"], study.step_ms["residual"]
    # Every frame scores its residual; keyframes also pay the flow they then do not warp with.
    return threshold_curve(study, study.residuals, family, True, lambda keys: r_ms + f_ms * keys / n)


def oracle_curve(study: Study, family: str) -> list[Point]:
    """The adaptive rule scored by what a cached frame really costs: the fraction of its pixels
    whose labels (warped cache) differ from the every-frame labels.

    Not a runnable schedule (knowing the score takes the deep stage on every frame). It is what a
    perfect change estimate would give, so it shows how much any better score could gain with this
    rule; it maximises agreement with ``every``, which need not maximise mIoU against ground truth.
    """
    n = study.frames
    changes = {}
    for t in range(n):
        for k in range(max(0, t - study.max_interval + 1), t):
            agreement = study.pair(t, k, True)[1]
            changes[(t, k)] = 1.0 - float(np.trace(agreement)) / max(1, int(agreement.sum()))
    return threshold_curve(study, changes, family, True, lambda _: 0.0)


def run_study(
    engine: Engine,
    frames: Iterable[np.ndarray],
    labels: Sequence[np.ndarray] | None,
    *,
    max_interval: int,
    variants: Sequence[tuple[str, int]],
    warp: bool,
    progress: Callable[[str], None] = print,
) -> tuple[Study, list[Point]]:
    progress("per frame: low, deep, head, and the head from each earlier frame a schedule can keep")
    measures = [ChangeMeasure(feature, pool) for feature, pool in variants]
    study = Study(engine, frames, labels, max_interval, measures=measures, warp=warp)
    n = study.frames
    points = []
    for interval in range(1, max_interval + 1):
        keys = clockwork_keys(n, interval)
        miou, agreement = study.score(keys, False)
        family = "every" if interval == 1 else "clockwork"
        points.append(
            Point(family, interval, len(keys), n, miou, agreement, study.cost(len(keys), 0.0, False))
        )
    for feature, pool in variants:
        progress(f"adaptive: feature {feature}, pool {pool}")
        points += adaptive_curve(study, ChangeMeasure(feature, pool), False, f"adaptive {feature}/{pool}")
    if warp:
        progress("flow warp: clockwork")
        for interval in range(2, max_interval + 1):
            keys = clockwork_keys(n, interval)
            miou, agreement = study.score(keys, True)
            points.append(
                Point(
                    "clockwork + warp",
                    interval,
                    len(keys),
                    n,
                    miou,
                    agreement,
                    study.cost(len(keys), 0.0, True),
                )
            )
        feature, pool = variants[0]
        progress(f"flow warp: adaptive {feature}/{pool}")
        points += adaptive_curve(
            study, ChangeMeasure(feature, pool), True, f"adaptive {feature}/{pool} + warp"
        )
        progress("flow warp: adaptive on the flow residual")
        points += residual_curve(study, "adaptive flow-residual + warp")
        progress("flow warp: adaptive on the true cache error (the oracle bound)")
        points += oracle_curve(study, ORACLE)
    return study, points


def measure_costs(engine: Engine, images: Sequence[np.ndarray], rounds: int = 3) -> dict[str, float]:
    """Median ms of each per-frame step, interleaved on the same frames (noisy machines drift)."""
    measure = ChangeMeasure()
    feature = measure.resolve(tuple(f.name for f in engine.stage_spec.low), engine.stage_spec.deep_inputs)
    flow = FlowWarp()
    times: dict[str, list[float]] = {k: [] for k in ("low", "deep", "head", "change", "flow", "warp")}
    engine.warmup(2)
    for _ in range(rounds):
        for prev, image in itertools.pairwise(images):
            t0 = time.perf_counter()
            low = engine.run_low(image)
            engine.synchronize()
            t1 = time.perf_counter()
            deep = engine.run_deep(low)
            engine.synchronize()
            t2 = time.perf_counter()
            engine.run_head(low, deep)
            t3 = time.perf_counter()
            measure.distance(measure.summarize(low[feature]), measure.summarize(low[feature]))
            t4 = time.perf_counter()
            flow.set_keyframe(prev)
            flow.residual(image)
            t5 = time.perf_counter()
            flow.warp(deep, image)  # the flow is reused from the residual
            t6 = time.perf_counter()
            for k, a, b in (
                ("low", t0, t1),
                ("deep", t1, t2),
                ("head", t2, t3),
                ("change", t3, t4),
                ("flow", t4, t5),
                ("warp", t5, t6),
            ):
                times[k].append(1000 * (b - a))
    return {k: round(float(np.median(v)), 3) for k, v in times.items()}


def modelled_ms(costs: dict[str, float], family: str, keyframes: int, frames: int) -> float:
    """Per-frame inference time of a schedule from per-step medians (see the module docstring)."""
    r = keyframes / frames
    ms = costs["low"] + costs["head"] + r * costs["deep"]
    if "warp" in family:
        # Every reused frame computes the flow and warps; the flow-residual score adds the flow
        # on keyframes too (its decision needs it), the feature score costs its own "change".
        ms += (1 - r) * (costs["flow"] + costs["warp"])
        ms += r * costs["flow"] if "residual" in family else 0.0
    if family.startswith("adaptive") and "residual" not in family:
        ms += costs["change"]
    return ms


def frontier_at(points: Sequence[Point], family: str, ratio: float) -> Point | None:
    """The best-mIoU point of a family with at most ``ratio`` keyframes."""
    cands = [p for p in points if p.family == family and p.ratio <= ratio + 1e-9]
    return max(cands, key=lambda p: p.miou) if cands else None


FEATURE_GRID = (0.08, 0.1, 0.11, 0.12, 0.13, 0.14, 0.15, 0.16, 0.18, 0.2, 0.22, 0.25, 0.3)
FLOW_GRID = (0.05, 0.06, 0.065, 0.07, 0.075, 0.08, 0.09, 0.1, 0.11, 0.12, 0.14, 0.16, 0.2)


def at_threshold(points: Sequence[dict], threshold: float) -> dict | None:
    """The schedule a threshold gives: that of the largest candidate threshold not above it."""
    below = [p for p in points if p["parameter"] <= threshold + 1e-12]
    return max(below, key=lambda p: p["parameter"]) if below else None


def threshold_rows(points: Sequence[dict], grid: Sequence[float]) -> list[float]:
    """The thresholds a report lists: ``grid``, tuned on CamVid, unless this footage's change
    scores fall outside it (two schedules or fewer over the grid); then the threshold of the
    schedule nearest each clockwork ratio 1/2 .. 1/10, so the table still spans the trade-off."""
    found = {p["parameter"] for p in (at_threshold(points, t) for t in grid) if p is not None}
    if len(found) > 2:
        return list(grid)
    rows = {
        min(points, key=lambda p: (abs(p["ratio"] - 1 / interval), -p["parameter"]))["parameter"]
        for interval in range(2, 11)
    }
    return sorted(rows)


def markdown(payload: dict, costs: dict[str, float]) -> str:
    """The tables of docs/scheduling.md from a sweep and a cost measurement."""
    points = payload["points"]
    n = payload["frames"]
    fam = {}
    for p in points:
        fam.setdefault(p["family"], []).append(p)
    every = fam["every"][0]
    every_ms = modelled_ms(costs, "every", n, n)
    out = ["| step | median ms | share of an every-frame step |", "|---|---|---|"]
    for k in ("low", "deep", "head", "change", "flow", "warp"):
        out.append(f"| {k} | {costs[k]:.1f} | {100 * costs[k] / every_ms:.1f} % |")
    out += [
        "",
        "| K | keyframes | clockwork | adaptive (features) | clockwork + warp | adaptive (flow) + warp "
        "| oracle + warp |",
        "|---|---|---|---|---|---|---|",
    ]

    def same_k(family: str, k: int) -> str:
        ps = [p for p in fam.get(family, []) if p["keyframes"] == k]
        if not ps:
            return "-"
        return (
            f"{np.mean([p['miou'] for p in ps]):.2f} / {np.mean([p['agreement'] for p in ps]):.2f}"
            f" (n={len(ps)})"
        )

    for c in fam["clockwork"]:
        k = c["keyframes"]
        # The same interval, not the same keyframe count: two intervals can give one count (K=6
        # and 7 on 30 frames), and the row showed the first one's warped result.
        cw = next(p for p in fam["clockwork + warp"] if p["parameter"] == c["parameter"])
        out.append(
            f"| {c['parameter']} | {k} ({c['ratio']:.3f}) | {c['miou']:.2f} / {c['agreement']:.2f} | "
            f"{same_k(feature_family(fam), k)} | {cw['miou']:.2f} / {cw['agreement']:.2f} | "
            f"{same_k('adaptive flow-residual + warp', k)} | {same_k(ORACLE, k)} |"
        )
    if payload.get("gains"):
        out += [
            "",
            "| K | keyframes | adaptive (features) - clockwork | 95 % interval | clockwork phases "
            "| adaptive (flow) + warp - clockwork + warp | 95 % interval | clockwork + warp phases |",
            "|---|---|---|---|---|---|---|---|",
        ]
        by_k = {}
        for family, found in payload["gains"].items():
            for g in found:
                by_k.setdefault(g["interval"], {})["warp" in family] = g

        def cells(g: dict | None) -> str:
            if g is None:
                return "- | - | -"
            return (
                f"{g['gain']:+.2f} | {g['low']:+.2f} to {g['high']:+.2f} | "
                f"{min(g['phases']):.2f}-{max(g['phases']):.2f} ({len(g['phases'])})"
            )

        for k, row in sorted(by_k.items()):
            count = next(iter(row.values()))["keyframes"]
            out.append(f"| {k} | {count} | {cells(row.get(False))} | {cells(row.get(True))} |")
    for title, family, grid in (
        ("adaptive, flow change + warp (the default)", "adaptive flow-residual + warp", FLOW_GRID),
        ("adaptive, feature change, no warp", feature_family(fam), FEATURE_GRID),
    ):
        out += [
            "",
            f"**{title}**",
            "",
            "| threshold | keyframe ratio | mIoU | lost | agreement | ms/frame (model) | speedup |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in threshold_rows(fam[family], grid):
            p = at_threshold(fam[family], t)
            if p is None:
                continue
            ms = modelled_ms(costs, family, p["keyframes"], n)
            out.append(
                f"| {t:g} | {p['ratio']:.3f} | {p['miou']:.2f} | {every['miou'] - p['miou']:.2f} | "
                f"{p['agreement']:.2f} | {ms:.1f} | {every_ms / ms:.2f}x |"
            )
    return "\n".join(out)


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, tuple):
        return [_rounded(v) for v in value]
    return value


def feature_family(families: dict) -> str:
    """The first feature-change adaptive family without warp (the sweep's first variant)."""
    return next(f for f in families if f.startswith("adaptive") and "warp" not in f and "residual" not in f)


def plot(
    points: Sequence[Point],
    families: Sequence[str],
    path: Path,
    title: str,
    *,
    phases: dict[str, Sequence[Gain]] | None = None,
    reference: str = "ground truth",
) -> None:
    """mIoU against keyframe ratio; ``phases`` draws, for a clockwork family, the range of its
    mIoU over the phases that give the same keyframe count."""
    # A Figure on its own Agg canvas: pyplot and matplotlib.use() would switch the host's backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    styles = {
        "clockwork": dict(marker="s", linestyle="--", color="tab:red"),
        ORACLE: dict(marker="", linestyle=":", color="tab:grey"),
    }
    every = next(p for p in points if p.family == "every")
    for family in families:
        ps = sorted((p for p in points if p.family == family), key=lambda p: p.ratio)
        if family == "clockwork":
            ps = [every, *ps]
        style = styles.get(family, dict(marker=".", linestyle="-"))
        (line,) = ax.plot([p.ratio for p in ps], [p.miou for p in ps], label=family, **style)
        for g in (phases or {}).get(family, ()):
            ratio = g.keyframes / every.frames
            span = [min(g.phases), max(g.phases)]
            ax.plot([ratio, ratio], span, color=line.get_color(), linewidth=3, alpha=0.35)
    ax.axhline(every.miou - 1.0, color="grey", linewidth=0.8, linestyle=":", label="every - 1.0 mIoU")
    ax.set_xlabel("keyframe ratio (deep runs / frames)")
    ax.set_ylabel(f"mIoU vs {reference} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def source_frames(uri: str, engine: Engine, limit: int | None = None) -> Iterator[np.ndarray]:
    """A source's frames (its first ``limit``), in order, at the engine's input size as the
    pipeline feeds them; read as the study consumes them."""
    from ..segmenter import Segmenter
    from ..source import open_source

    segmenter = Segmenter(engine=engine)  # for its preprocessing; the engine stays open
    count = 0
    with open_source(uri) as source:
        for frame in source:
            if limit is not None and count >= limit:
                break
            count += 1
            yield segmenter.preprocess(frame.image)
    if count < 2:
        raise DatasetError(f"{uri} gave {count} frame(s); a schedule needs a sequence")


PROG = "python -m rtseg.schedule.sweep"
DEFAULT_VARIANT = ("l1_cat", 4)


def variant(text: str) -> tuple[str, int]:
    """An argparse type for --variant: FEATURE/POOL, a feature name and a pooling of at least 1
    (``l1_cat`` alone was an IndexError after the engine was built). Whether the model has the
    feature is checked once it is loaded."""
    feature, slash, pool = text.partition("/")
    if slash and feature and pool.isdigit() and int(pool) >= 1:
        return feature, int(pool)
    raise argparse.ArgumentTypeError(
        f"expected FEATURE/POOL, a low feature of the model and a whole number >= 1 "
        f"(default {DEFAULT_VARIANT[0]}/{DEFAULT_VARIANT[1]}), got {text!r}"
    )


def main(argv: list[str] | None = None) -> int:
    """The sweep's command line; an RtsegError (a source that cannot be opened, a missing backend)
    is reported in one line as the ``rtseg`` command reports it, not in a traceback."""
    from ..cli import run_reported

    return run_reported(PROG, lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    # __doc__ is None under python -OO
    p = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").partition("\n")[0])
    frames = p.add_mutually_exclusive_group()
    frames.add_argument("--root", type=Path, help="CamVid folder: its --split in file order, with its labels")
    frames.add_argument(
        "--source",
        help="frames without labels (a video, an image folder, any rtseg source URI), scored against "
        "the every-frame labels",
    )
    p.add_argument("--split", default="val")
    p.add_argument("--weights", type=Path, default=None, help="checkpoint (default: rtseg's shipped model)")
    p.add_argument("--model", default=None)
    p.add_argument(
        "--max-interval", type=int, default=10, help="most frames from one keyframe to the next (default 10)"
    )
    p.add_argument(
        "--threads", type=int, default=1, help="CPU threads of the engine (torch, ONNX Runtime, OpenVINO)"
    )
    p.add_argument("--backend", default="torch", help="inference backend (default: torch, the reference)")
    p.add_argument("--frames", type=int, default=None, help="use only the first N frames")
    p.add_argument("--no-warp", action="store_true")
    p.add_argument(
        "--variant",
        action="append",
        type=variant,
        default=None,
        metavar="FEATURE/POOL",
        help="change-measure variants to sweep (the first is also tried with the flow warp)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for scheduling_sweep.json and scheduling.png (scheduling_costs.json with --costs-only)",
    )
    p.add_argument(
        "--costs-only",
        action="store_true",
        help="only measure the per-step costs (pause other work on the machine first)",
    )
    p.add_argument("--report", action="store_true", help="print the markdown tables from the JSON files")
    args = p.parse_args(argv)
    if not args.report and args.root is None and args.source is None:
        p.error("give the frames: --root CAMVID_DIR (labelled) or --source URI (unlabelled)")
    if args.frames is not None and args.frames < 2:
        p.error(f"--frames must be at least 2 (a schedule needs a sequence), got {args.frames}")
    if args.max_interval < 2:
        p.error(f"--max-interval must be at least 2 (1 is every frame), got {args.max_interval}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.report:
        for name, made_by in (
            ("scheduling_sweep.json", "a sweep"),
            ("scheduling_costs.json", "--costs-only"),
        ):
            if not (args.out / name).is_file():
                p.error(
                    f"--report needs {args.out / name}: run {made_by} with --out {args.out} first "
                    "(--costs-only times each step on the first 25 frames; best on an idle machine)"
                )
        payload = json.loads((args.out / "scheduling_sweep.json").read_text())
        costs = json.loads((args.out / "scheduling_costs.json").read_text())["median_ms"]
        print(markdown(payload, costs))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    from ..evaluate import fit_classes
    from ..models import load_model

    model = load_model(args.model, None if args.weights is None else str(args.weights))
    variants: list[tuple[str, int]] = args.variant or [DEFAULT_VARIANT]
    low_names = [f.name for f in model.stage_spec.low]
    for feature, pool in variants:  # before the engine is built and the frames are read
        if feature not in low_names:
            given = "" if args.variant else " (the default)"
            p.error(
                f"--variant {feature}/{pool}{given}: {feature!r} is not a low feature of "
                f"{model.meta.model}; FEATURE is one of {', '.join(low_names)}"
            )
    if args.root is not None:
        dataset = camvid(args.root, args.split)
        try:  # before the engine is built: a state dict's unnamed classes take CamVid's names
            fit_classes(model, dataset, "camvid", args.weights)
        except ConfigError as e:
            p.error(f"--weights {args.weights or '(shipped)'} on --root {args.root}: {e}")
    takes_threads = "threads" in BACKEND_OPTIONS.get(args.backend, ())  # ONNX Runtime, OpenVINO
    engine = load(model, backend=args.backend, **({"threads": args.threads} if takes_threads else {}))
    if args.root is not None:
        count = len(dataset) if args.frames is None else min(len(dataset), args.frames)
        samples = [dataset[i] for i in range(count)]  # decode only those
        # At the engine's input as run_sequence feeds them (and source_frames below): --costs-only
        # times the steps on them as they are.
        interpolation = engine.meta.preprocessing.interpolation
        images = [to_input(s.image, engine.input_size, interpolation)[0] for s in samples]
        labels = [s.label for s in samples]
        sequence, reference = f"CamVid {args.split}", "ground truth"
    else:
        images, labels = source_frames(args.source, engine, args.frames), None
        sequence, reference = Path(args.source).name or args.source, "every-frame labels"
    if args.costs_only:
        costs = measure_costs(engine, list(itertools.islice(images, 25)))
        (args.out / "scheduling_costs.json").write_text(
            json.dumps(
                {
                    "threads": engine.info.threads or args.threads,  # what the engine ran with
                    "backend": engine.info.backend,
                    "notes": list(engine.info.notes),
                    "input_size": list(engine.input_size),
                    "median_ms": costs,
                },
                indent=1,
            )
        )
        print(costs)
        return 0
    t0 = time.perf_counter()
    total = len(images) if isinstance(images, list) else args.frames
    study, points = run_study(
        engine,
        progress_bar(images, total=total, unit="frame", leave=False),  # a long clip takes a while
        labels,
        max_interval=args.max_interval,
        variants=variants,
        warp=not args.no_warp,
    )
    log.info("adaptive against clockwork: paired block bootstrap and clockwork phases")
    compared = {f"adaptive {variants[0][0]}/{variants[0][1]}": False}  # family: warped
    if not args.no_warp:
        compared["adaptive flow-residual + warp"] = True
    gains = {family: gains_over_clockwork(study, points, family, warp) for family, warp in compared.items()}
    payload = {
        "model": model.meta.model,
        "weights": args.weights.name if args.weights is not None else "shipped",
        "sequence": sequence,
        "reference": reference,
        "frames": study.frames,
        "max_interval": args.max_interval,
        "stage_ms_median": {k: round(v, 2) for k, v in study.stage_ms.items()},
        "warp_ms_median": round(study.warp_ms, 2),
        "seconds": round(time.perf_counter() - t0, 1),
        "gains": {
            family: [{k: _rounded(v) for k, v in dataclasses.asdict(g).items()} for g in found]
            for family, found in gains.items()
        },
        "points": [
            {
                "family": q.family,
                "parameter": q.parameter,
                "keyframes": q.keyframes,
                "ratio": round(q.ratio, 4),
                "miou": round(q.miou, 2),
                "agreement": round(q.agreement, 2),
                "ms_per_frame": round(q.ms_per_frame, 2),
            }
            for q in points
        ],
    }
    (args.out / "scheduling_sweep.json").write_text(json.dumps(payload, indent=1))
    families = ["clockwork", f"adaptive {variants[0][0]}/{variants[0][1]}"]
    if not args.no_warp:
        families += ["clockwork + warp", "adaptive flow-residual + warp", ORACLE]
    plot(
        points,
        families,
        args.out / "scheduling.png",
        f"{model.meta.model} on {sequence} ({study.frames} frames in order)",
        phases={("clockwork + warp" if warp else "clockwork"): gains[f] for f, warp in compared.items()},
        reference=reference,
    )
    print(f"wrote {args.out / 'scheduling_sweep.json'} and {args.out / 'scheduling.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
