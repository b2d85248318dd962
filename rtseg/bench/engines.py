"""The engine comparison in bench/engines.md: each backend and precision per model, side by side.

    python -m rtseg.bench.engines --out bench/engines.md --json bench/results/engines.json

All engines of one model are timed round robin in one process after a warm-up, so that a noisy
machine's drift hits them alike; the table reports medians and ratios. Achieved GFLOP/s is the
counted convolution/matmul work of a full pass divided by its median latency, as a fraction of
this machine's fp32 matmul peak measured in the same process. ``auto`` is then asked to choose
among the fp32 candidates with a fresh measurement, and its pick is compared with the table's.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.preprocess import Normalize, Preprocessing
from ..engine import load
from ..engine.auto import time_engines
from ..engine.base import Engine
from ..engine.calibration import CalibrationList
from ..errors import BackendUnavailableError, ConfigError, EngineBuildError
from ..hardware import usable_cores
from ..models import StagedSegmenter, get_model, list_models
from ..models.base import prime_batchnorm as models_prime_batchnorm
from ..models.flops import stage_flops
from .environment import fingerprint, hardware_line
from .weights import WeightsChoice, choose_weights, data_root

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One column of the table: a backend, a precision and backend options."""

    label: str
    backend: str
    precision: str
    options: dict[str, Any] = field(default_factory=dict)


VARIANTS = (
    Variant("torch", "torch", "fp32"),
    Variant("torch CL", "torch", "fp32", {"channels_last": True}),
    Variant("ORT fp32", "onnxruntime", "fp32"),
    Variant("ORT int8", "onnxruntime", "int8"),
    Variant("OpenVINO fp32", "openvino", "fp32"),
    Variant("OpenVINO int8", "openvino", "int8"),
)
# What `auto` chooses among at fp32 on a CPU (rtseg.engine.auto.candidates), by table label.
AUTO_LABELS = {
    "torch": "torch",
    "torch channels_last": "torch CL",
    "onnxruntime": "ORT fp32",
    "openvino": "OpenVINO fp32",
}
SIZE = (1024, 512)


@dataclass(frozen=True)
class Case:
    """A model at an input size with the weights it runs."""

    model: str
    size: tuple[int, int]
    calibration_num: int = 16  # int8 speed does not depend on which frames set the ranges

    @property
    def name(self) -> str:
        return f"{self.model} {self.size[0]}x{self.size[1]}"


def default_cases() -> list[Case]:
    cases = [Case(m, SIZE) for m in list_models()]
    # The CamVid checkpoint at its own size, with the list its int8 quality is reported for.
    cases.append(Case("espnet", (480, 360), calibration_num=64))
    return cases


def matmul_peak(threads: int, n: int = 4096, runs: int = 5) -> float:
    """fp32 GFLOP/s of an n x n matmul in torch (MKL), median of ``runs`` after a warm-up."""
    torch.set_num_threads(threads)
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def prime_batchnorm(net: torch.nn.Module, frames: Sequence[np.ndarray], preprocessing: Preprocessing) -> None:
    """Give a randomly initialised network the BatchNorm statistics of real frames.

    Without them rtseg's quantiser keeps most stages of a random network in fp32 (their int8
    error is too large), which would make the int8 columns time fp32 graphs. Speed does not
    depend on weight values; this only makes the quantised graphs the ones a trained network
    would give.
    """
    if len(frames) < 2:
        raise ConfigError(f"BatchNorm priming needs at least 2 frames, got {len(frames)}")
    normalize = Normalize(preprocessing)
    # Pairs: a batch of one fails in BatchNorm layers after global pooling (DeepLab's ASPP pool).
    pairs = (normalize(torch.from_numpy(np.stack(frames[i : i + 2]))) for i in range(0, len(frames) - 1, 2))
    models_prime_batchnorm(net, pairs)


def bench_network(
    model: str, size: tuple[int, int], calibration: CalibrationList
) -> tuple[StagedSegmenter, WeightsChoice]:
    """The network a benchmark times: real weights when ../shared has them, else a random init
    seeded (so a rerun finds its cached exports under the same weights hash) and BatchNorm-primed."""
    weights = choose_weights(model, size)
    with torch.random.fork_rng(devices=[]):  # leaves the caller's generator as it was
        torch.manual_seed(0)
        net = get_model(model, weights=weights.path)
    if not weights.real:
        prime_batchnorm(net, list(calibration.frames(size))[:4], net.meta.preprocessing)
    return net, weights


def measure_case(
    case: Case,
    images: Path,
    *,
    engine_dir: Path | None,
    runs: int,
    warmup: int,
    variants: Sequence[Variant] = VARIANTS,
) -> dict[str, Any]:
    calibration = CalibrationList.from_images(images, case.calibration_num)
    net, weights = bench_network(case.model, case.size, calibration)
    flops = stage_flops(net, case.size).total
    engines: dict[str, Engine] = {}
    skipped: dict[str, str] = {}
    for v in variants:
        started = time.perf_counter()
        try:
            engines[v.label] = load(
                net,
                backend=v.backend,
                precision=v.precision,
                input_size=case.size,
                engine_dir=engine_dir,
                calibration=calibration if v.precision == "int8" else None,
                **v.options,
            )
        except (BackendUnavailableError, EngineBuildError, ConfigError) as exc:
            skipped[v.label] = str(exc).splitlines()[0]
            log.warning("%s %s: skipped (%s)", case.name, v.label, skipped[v.label])
            continue
        log.info("%s %s: ready in %.1f s", case.name, v.label, time.perf_counter() - started)
    notes = {label: list(engine.info.notes) for label, engine in engines.items()}
    times = time_engines(engines, runs=runs, warmup=warmup)
    for engine in engines.values():
        engine.close()
    medians = {label: statistics.median(ms) for label, ms in times.items()}
    fp32 = {label: ms for label, ms in medians.items() if label in AUTO_LABELS.values()}
    auto = load(net, backend="auto", input_size=case.size, engine_dir=engine_dir, remeasure=True)
    auto_note = next((n for n in auto.info.notes if n.startswith("auto: picked")), "")
    auto_label = AUTO_LABELS.get(_auto_choice(auto), auto.info.backend)
    auto.close()
    return {
        "model": case.model,
        "size": list(case.size),
        "weights": weights.origin,
        "gflops": flops / 1e9,
        "median_ms": medians,
        "spread_ms": {label: [min(ms), max(ms)] for label, ms in times.items()},
        "skipped": skipped,
        "notes": notes,
        "calibration": {"num": len(calibration), "id": calibration.id},
        "fastest_fp32": min(fp32, key=fp32.__getitem__) if fp32 else None,
        "auto": {"picked": auto_label, "note": auto_note},
    }


def _auto_choice(engine: Engine) -> str:
    """The auto candidate label an engine was chosen as: 'torch channels_last', 'onnxruntime', ..."""
    if engine.info.backend == "torch" and "channels_last" in engine.info.notes:
        return "torch channels_last"
    return engine.info.backend


def _cell(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.1f} ms ({1000 / ms:.1f})"


def _auto_cell(result: dict[str, Any]) -> str:
    """auto's pick, and how much slower it was than the fastest fp32 engine in this table's runs
    (auto decides on its own, separate measurement, so near-ties can come out the other way)."""
    picked, fastest, med = result["auto"]["picked"], result["fastest_fp32"], result["median_ms"]
    if picked == fastest or picked not in med or fastest not in med:
        return picked
    return f"{picked} (+{100 * (med[picked] / med[fastest] - 1):.1f} % here)"


def _calibration_counts(results: Sequence[dict[str, Any]]) -> str:
    """How many frames calibrated each case's int8 graphs, as used (--calibration-num changes it)."""
    counts = [(f"{r['model']} at {r['size'][0]}x{r['size'][1]}", r["calibration"]["num"]) for r in results]
    if not counts:
        return "no cases"
    common = Counter(n for _, n in counts).most_common(1)[0][0]
    others = [f"{n} for {name}" for name, n in counts if n != common]
    return "; ".join([f"{common} per model", *others])


BEGIN = "<!-- rtseg.bench.engines: begin (generated) -->"
END = "<!-- rtseg.bench.engines: end -->"


def format_markdown(document: dict[str, Any]) -> str:
    peak = document["peak_gflops"]
    labels = [v["label"] for v in document["variants"]]
    before, after = document["peak_gflops_before_after"]
    lines = [
        f"Measured {document['environment']['timestamp']} on {document['hardware']} "
        f"({document['threads']} threads); `{document['command']}`. Median of {document['runs']} "
        f"round-robin runs after {document['warmup']} warm-up runs, per full pass (low + deep + head, "
        "uint8 labels out). fp32 matmul peak (torch, 4096x4096): "
        f"{before:.0f} GFLOP/s before, {after:.0f} after. int8: ONNX Runtime static QDQ quantisation "
        f"calibrated on images spread evenly over {document['calibration_images']} "
        f"({_calibration_counts(document['results'])}).",
        "",
        "Latency per frame and FPS (in brackets); fastest in bold:",
        "",
        "| model @ input | GFLOPs | "
        + " | ".join(labels)
        + " | fastest | fastest fp32 | auto (fp32) picked |",
        "|---|---|" + "---|" * len(labels) + "---|---|---|",
    ]
    for r in document["results"]:
        med = r["median_ms"]
        best = min(med, key=med.__getitem__)
        cells = [_cell(med.get(label)) for label in labels]
        cells = [f"**{c}**" if label == best else c for c, label in zip(cells, labels, strict=True)]
        lines.append(
            f"| {r['model']} @ {r['size'][0]}x{r['size'][1]} | {r['gflops']:.2f} | "
            + " | ".join(cells)
            + f" | {best} | {r['fastest_fp32']} | {_auto_cell(r)} |"
        )
    lines += [
        "",
        f"Achieved GFLOP/s (fraction of the {peak:.0f} GFLOP/s fp32 matmul peak) and the int8 speed-up",
        "over fp32 on the same backend:",
        "",
        "| model @ input | " + " | ".join(labels) + " | ORT int8 / fp32 | OpenVINO int8 / fp32 |",
        "|---|" + "---|" * len(labels) + "---|---|",
    ]
    for r in document["results"]:
        med = r["median_ms"]
        cells = []
        for label in labels:
            ms = med.get(label)
            cells.append(
                "-"
                if ms is None
                else f"{r['gflops'] / ms * 1000:.0f} ({r['gflops'] / ms * 1e5 / peak:.0f} %)"
            )
        ratios = []
        for fp, q in (("ORT fp32", "ORT int8"), ("OpenVINO fp32", "OpenVINO int8")):
            ratios.append(f"{med[fp] / med[q]:.2f}x" if fp in med and q in med else "-")
        lines.append(f"| {r['model']} @ {r['size'][0]}x{r['size'][1]} | " + " | ".join(cells + ratios) + " |")
    int8 = [
        f"{r['model']} {r['size'][0]}x{r['size'][1]} {label}: {note.removeprefix('int8 schemes ')}"
        for r in document["results"]
        for label, notes in r["notes"].items()
        for note in notes
        if note.startswith("int8 schemes")
    ]
    if int8:
        lines += ["", "Quantised stages (a stage whose int8 error is too large stays fp32):", ""]
        lines += [f"- {line}" for line in int8]
    skipped = [(r["model"], k, v) for r in document["results"] for k, v in r["skipped"].items()]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{m} {k}: {v}" for m, k, v in skipped)]
    return "\n".join(lines) + "\n"


def write_between_markers(path: Path, generated: str) -> None:
    """Replace the generated block of ``path`` (hand-written text around it is kept)."""
    block = f"{BEGIN}\n{generated}{END}\n"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + block + tail.lstrip("\n")
    else:
        text = (text + "\n" if text else "") + block
    path.write_text(text, encoding="utf-8")


def cases_for(models: Sequence[str] | None, size: tuple[int, int] | None) -> list[Case]:
    """What to measure: ``models`` (default every model) at ``size`` (default 1024x512); with
    neither, ``default_cases()``. A size without models applies to every model: it was ignored,
    and the default cases ran at their own sizes for half an hour."""
    if models is None and size is None:
        return default_cases()
    return [Case(m, size or SIZE) for m in (models or list_models())]


PROG = "python -m rtseg.bench.engines"


def main(argv: list[str] | None = None) -> int:
    """The benchmark's command line; an RtsegError (an unknown model, images that cannot
    calibrate) is reported in one line as the ``rtseg`` command reports it, not in a traceback."""
    from ..cli import run_reported

    return run_reported(PROG, lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    from ..cli.common import parse_size, positive_int, whole_number

    # __doc__ is None under python -OO
    p = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").partition("\n")[0])
    p.add_argument(
        "--models",
        nargs="+",
        choices=list_models(),
        default=None,
        help="default: every model (at 1024x512 without --size, espnet also at 480x360)",
    )
    p.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="one input size WxH for every model measured (default 1024x512)",
    )
    # Checked here: a bad count failed only after every engine was built (minutes), in a traceback.
    p.add_argument("--runs", type=positive_int, default=20, help="timed runs per engine (round robin)")
    p.add_argument("--warmup", type=whole_number, default=3)
    p.add_argument("--calibration-images", type=Path, default=None, help="default: RTSEG_DATA camvid/train")
    p.add_argument(
        "--calibration-num",
        type=positive_int,
        default=None,
        help="int8 calibration frames (default: 16; 64 for espnet 480x360)",
    )
    p.add_argument("--engine-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="markdown table (printed when absent)")
    p.add_argument("--json", type=Path, default=None, help="the raw measurements")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    cases = cases_for(args.models, args.size)
    if args.calibration_num is not None:
        cases = [replace(c, calibration_num=args.calibration_num) for c in cases]
    try:
        images = args.calibration_images or data_root() / "camvid" / "train"
    except ConfigError as exc:
        raise SystemExit(f"calibration images: {exc}; or pass --calibration-images DIR") from None
    if not images.is_dir():
        raise SystemExit(f"calibration images: {images} is not a folder (pass --calibration-images DIR)")
    env = fingerprint()
    threads = usable_cores()  # as ONNX Runtime's own default: the same count for every engine compared
    peak = matmul_peak(threads)
    log.info("fp32 matmul peak: %.0f GFLOP/s with %d threads", peak, threads)
    results = []
    for case in cases:
        log.info("measuring %s", case.name)
        results.append(
            measure_case(case, images, engine_dir=args.engine_dir, runs=args.runs, warmup=args.warmup)
        )
    peak_after = matmul_peak(threads)
    document = {
        "command": " ".join([PROG, *(sys.argv[1:] if argv is None else argv)]),
        "environment": env,
        "hardware": hardware_line(env),
        "peak_gflops": max(peak, peak_after),
        "peak_gflops_before_after": [peak, peak_after],
        "threads": threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "calibration_images": str(images),
        "variants": [asdict(v) for v in VARIANTS],
        "results": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2))
    table = format_markdown(document)
    if args.out:
        write_between_markers(args.out, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
