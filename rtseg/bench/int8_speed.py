"""How much faster fully int8 stage graphs run than fp32 on this CPU, per stage, on ONNX Runtime and OpenVINO.

    python -m rtseg.bench.int8_speed --json bench/results/int8_speed.json

bench/engines.md shows int8 barely faster than fp32, partly because rtseg's quantiser keeps a stage
in fp32 when its int8 error exceeds MAX_RELATIVE_ERROR. Here every stage is quantised with the
"full" scheme and no accuracy guard, so the ratios measure the int8 kernels alone: the error each
stage would have been judged on is recorded, never acted on. Per stage, the fp32 and int8 graphs
run in four sessions (ORT fp32, ORT int8, OpenVINO fp32, OpenVINO int8) timed round robin on the
same real stage inputs (the first calibration frame's); the total is the sum of stage medians.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..engine import load
from ..engine.auto import time_round_robin
from ..engine.cache import ArtifactCache
from ..engine.calibration import CalibrationList, stage_feeds
from ..engine.onnx_export import STAGES, ensure_onnx, graph_io
from ..engine.openvino_backend import HINTS, import_openvino, shared_core
from ..engine.ort_backend import import_onnxruntime, session_options
from ..engine.quantize import SCHEMES, quantize_graph
from ..errors import BackendUnavailableError, ConfigError
from .engines import bench_network
from .environment import fingerprint, hardware_line
from .weights import data_root

log = logging.getLogger(__name__)

MODELS = ("icnet-r18", "espnet")
SIZE = (1024, 512)
ORT = ("ORT fp32", "ORT int8")
OPENVINO = ("OpenVINO fp32", "OpenVINO int8")
LABELS = (*ORT, *OPENVINO)
# Ratio name -> (fp32 label, int8 label)
RATIOS = {"onnxruntime": ORT, "openvino": OPENVINO}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

Runner = Callable[[], Any]


def qdq_counts(proto: onnx.ModelProto) -> dict[str, int]:
    """How many QuantizeLinear / DequantizeLinear nodes a graph has (0 and 0: it is not quantised)."""
    ops = [node.op_type for node in proto.graph.node]
    return {op: ops.count(op) for op in QDQ_OPS}


def ort_runner(path: Path, feed: Mapping[str, np.ndarray]) -> Runner:
    """One ONNX Runtime CPU session with the options rtseg's engines use, bound to ``feed``."""
    session = import_onnxruntime().InferenceSession(
        str(path), session_options(), providers=["CPUExecutionProvider"]
    )
    inputs = dict(feed)
    return lambda: session.run(None, inputs)


def openvino_runner(ov: Any, core: Any, path: Path, precision: str, feed: Mapping[str, np.ndarray]) -> Runner:
    """One OpenVINO CPU infer request, compiled with the config rtseg's openvino backend uses."""
    config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    inputs = dict(feed)
    return lambda: request.infer(inputs, share_inputs=True)


def _ratios(medians: Mapping[str, float]) -> dict[str, float]:
    return {
        name: medians[fp32] / medians[int8]
        for name, (fp32, int8) in RATIOS.items()
        if fp32 in medians and int8 in medians
    }


def measure_model(
    model: str,
    size: tuple[int, int],
    images: Path,
    *,
    calibration_num: int,
    runs: int,
    warmup: int,
    engine_dir: Path | None,
) -> dict[str, Any]:
    """Per-stage fp32 and unguarded int8 latencies of ``model`` at ``size`` (w, h)."""
    calibration = CalibrationList.from_images(images, calibration_num)
    net, weights = bench_network(model, size, calibration)
    # The cached fp32 stage graphs, and an fp32 engine computing the deep and head stages' inputs.
    reference = load(net, backend="onnxruntime", precision="fp32", input_size=size, engine_dir=engine_dir)
    fp32 = ensure_onnx(net, size, ArtifactCache(engine_dir))
    skipped: dict[str, str] = {}
    try:
        ov = import_openvino()
        core = shared_core()
    except BackendUnavailableError as exc:
        ov = core = None
        skipped["OpenVINO"] = str(exc)
        log.warning("%s: OpenVINO columns skipped (%s)", model, exc)
    stages: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="rtseg-int8-speed-") as tmp:
            workdir = Path(tmp)
            for stage in STAGES:
                path = fp32.files[stage]
                inputs = tuple(
                    i["name"] for i in graph_io(onnx.load(str(path), load_external_data=False))["inputs"]
                )
                feeds = list(stage_feeds(reference, calibration.frames(size), stage, inputs))
                started = time.perf_counter()
                proto, report = quantize_graph(
                    path,
                    feeds,
                    flavour="cpu",
                    workdir=workdir,
                    schemes=(SCHEMES[0],),
                    max_error=float("inf"),
                )
                quantize_s = time.perf_counter() - started
                int8_path = workdir / f"{stage}.int8.onnx"
                onnx.save(proto, str(int8_path))
                feed = {name: np.ascontiguousarray(value) for name, value in feeds[0].items()}
                runners = {"ORT fp32": ort_runner(path, feed), "ORT int8": ort_runner(int8_path, feed)}
                if ov is not None:
                    for label, precision, graph in (
                        ("OpenVINO fp32", "fp32", path),
                        ("OpenVINO int8", "int8", int8_path),
                    ):
                        try:
                            runners[label] = openvino_runner(ov, core, graph, precision, feed)
                        except RuntimeError as exc:
                            skipped[f"{stage} {label}"] = str(exc).splitlines()[0]
                            log.warning("%s %s %s: skipped (%s)", model, stage, label, exc)
                times = time_round_robin(runners, runs=runs, warmup=warmup)
                runners.clear()
                medians = {label: statistics.median(ms) for label, ms in times.items()}
                stages[stage] = {
                    "median_ms": medians,
                    "spread_ms": {label: [min(ms), max(ms)] for label, ms in times.items()},
                    "ratio": _ratios(medians),
                    "qdq_nodes": qdq_counts(proto),
                    "quantization": report,
                    "quantize_s": quantize_s,
                    "inputs": {name: list(value.shape) for name, value in feed.items()},
                }
                log.info(
                    "%s %s: %s",
                    model,
                    stage,
                    ", ".join(f"{label} {ms:.1f} ms" for label, ms in medians.items()),
                )
    finally:
        reference.close()
    labels = [label for label in LABELS if all(label in s["median_ms"] for s in stages.values())]
    total = {label: sum(s["median_ms"][label] for s in stages.values()) for label in labels}
    return {
        "model": model,
        "size": list(size),
        "weights": weights.origin,
        "calibration": {"num": len(calibration), "id": calibration.id, "source": str(calibration.source)},
        "stages": stages,
        "total": {"median_ms": total, "ratio": _ratios(total)},
        "skipped": skipped,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_markdown(document: Mapping[str, Any]) -> str:
    lines = [
        f"Measured {document['environment']['timestamp']} on {document['hardware']}; "
        f"`{document['command']}`. Median ms of {document['runs']} round-robin runs per stage after "
        f"{document['warmup']} warm-up runs; total: sum of stage medians. int8: scheme 'full', "
        "no accuracy guard (every stage quantised); ratio: fp32 / int8 (above 1: int8 is faster).",
        "",
        "| model @ input | stage | ORT fp32 | ORT int8 | ORT fp32/int8 | OpenVINO fp32 | OpenVINO int8 "
        "| OpenVINO fp32/int8 | Q/DQ nodes | int8 error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in document["results"]:
        name = f"{r['model']} @ {r['size'][0]}x{r['size'][1]}"
        rows = [(stage, s) for stage, s in r["stages"].items()] + [("total", r["total"])]
        for stage, s in rows:
            med, ratio = s["median_ms"], s["ratio"]
            qdq = s.get("qdq_nodes")
            error = s.get("quantization", {}).get("errors", {}).get("full")
            cells = [
                *(_ms(med.get(label)) for label in ORT),
                _ratio(ratio.get("onnxruntime")),
                *(_ms(med.get(label)) for label in OPENVINO),
                _ratio(ratio.get("openvino")),
                "" if qdq is None else f"{qdq['QuantizeLinear']}/{qdq['DequantizeLinear']}",
                "" if error is None else f"{error:.3f}",
            ]
            stage_cell = "**total**" if stage == "total" else stage
            lines.append(f"| {name} | {stage_cell} | " + " | ".join(cells) + " |")
    skipped = [(r["model"], k, v) for r in document["results"] for k, v in r["skipped"].items()]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{m} {k}: {v}" for m, k, v in skipped)]
    return "\n".join(lines) + "\n"


PROG = "python -m rtseg.bench.int8_speed"


def main(argv: Sequence[str] | None = None) -> int:
    """The benchmark's command line; an RtsegError (an unknown model, images that cannot
    calibrate) is reported in one line as the ``rtseg`` command reports it, not in a traceback."""
    from ..cli import run_reported

    return run_reported(PROG, lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    from ..cli.common import parse_size, positive_int, whole_number

    # __doc__ is None under python -OO
    p = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").partition("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), metavar="NAME")
    p.add_argument("--size", type=parse_size, default=SIZE, help="input size WxH (default 1024x512)")
    # Checked here, not after the models were quantised and their sessions built.
    p.add_argument(
        "--runs", type=positive_int, default=15, help="timed runs per session and stage (round robin)"
    )
    p.add_argument("--warmup", type=whole_number, default=3)
    p.add_argument("--calibration-images", type=Path, default=None, help="default: RTSEG_DATA camvid/train")
    p.add_argument("--calibration-num", type=positive_int, default=8, help="calibration frames per model")
    p.add_argument("--engine-dir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None, help="the raw measurements")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        images = args.calibration_images or data_root() / "camvid" / "train"
    except ConfigError as exc:
        raise SystemExit(f"calibration images: {exc}; or pass --calibration-images DIR") from None
    if not images.is_dir():
        raise SystemExit(f"calibration images: {images} is not a folder (pass --calibration-images DIR)")
    env = fingerprint()
    results = []
    for model in args.models:
        log.info("measuring %s at %dx%d", model, *args.size)
        results.append(
            measure_model(
                model,
                args.size,
                images,
                calibration_num=args.calibration_num,
                runs=args.runs,
                warmup=args.warmup,
                engine_dir=args.engine_dir,
            )
        )
    document = {
        "command": " ".join([PROG, *(sys.argv[1:] if argv is None else argv)]),
        "environment": env,
        "hardware": hardware_line(env),
        "size": list(args.size),
        "runs": args.runs,
        "warmup": args.warmup,
        "calibration_images": str(images),
        "calibration_num": args.calibration_num,
        "scheme": SCHEMES[0].name,
        "max_error": None,  # no accuracy guard
        "results": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2))
    print(format_markdown(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
