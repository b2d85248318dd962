"""`rtseg bench`: throughput and latency of every combination asked for, and the Cityscapes table."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from ..bench.environment import fingerprint
from ..bench.measure import DEFAULT_SOURCE, ENCODINGS
from ..bench.plot import plot_format, plot_quality_speed
from ..bench.quality import camvid_miou, check_camvid
from ..bench.report import (
    build_document,
    format_results,
    format_table,
    table_document,
    write_json,
    write_results_csv,
    write_table_csv,
)
from ..bench.runner import SweepInterrupted, SweepSpec, run_sweep
from ..bench.stats import StopRule
from ..bench.table import TABLES, PublishedRow, implemented, load_table, table_path
from ..engine import BACKENDS, PRECISIONS
from ..errors import ConfigError
from ..models import DEFAULT_MODEL, list_models
from ..paths import check_output
from ..schedule import SCHEDULERS
from ..signals import restore, take
from ..source import is_live_uri, open_source, redacted
from .common import (
    DEVICE_HELP,
    output_file,
    parse_size,
    positive_float,
    positive_int,
    ranged,
    refuse_overwrites,
    whole_number,
    write_output,
)

# (frames, min frames, warm-up, seconds per phase): a sweep, and the table (big inputs, many models)
SWEEP_DEFAULTS = (100, 10, 5, 60.0)
TABLE_DEFAULTS = (20, 5, 2, 20.0)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure throughput and latency (engine-only and end to end); the Cityscapes table",
        description="Measures every combination of the options given, each in a fresh process: "
        "engine-only FPS, end-to-end FPS (source -> scheduler -> overlay -> null sink), latency "
        "p50/p90/p99 (a frame's read to its labels at frame size), a per-stage breakdown, keyframe "
        "ratio and peak memory. Frames are taken until the 95% confidence interval of the median "
        "is within --ci of it (at least --min-frames, at most --frames, at most --max-seconds per "
        "phase; a phase cut short of --min-frames by the end of the source or by --max-seconds is "
        "noted). With several --scheduler values, they run over the same frames and are scored "
        "against 'every' (agreement).",
        epilog="Unsupported combinations (say int8 on torch) are reported as skipped with the reason.",
    )
    # action="extend": a repeated flag adds to the list (argparse's default kept the last one, and
    # --scheduler every --scheduler clockwork measured clockwork alone, without a word). Defaults
    # are filled in by run(): extend would add to a default list.
    p.add_argument(
        "--model",
        nargs="+",
        action="extend",
        choices=list_models(),
        default=None,
        help=f"models (default: {DEFAULT_MODEL}; with --table: the table's implemented rows)",
    )
    p.add_argument(
        "--backend", nargs="+", action="extend", choices=BACKENDS, help="backends (default: torch)"
    )
    p.add_argument(
        "--precision",
        nargs="+",
        action="extend",
        choices=sorted({p for allowed in PRECISIONS.values() for p in allowed}),
        help="precisions (default: fp32)",
    )
    p.add_argument(
        "--size",
        nargs="+",
        action="extend",
        type=parse_size,
        default=None,
        help="engine input sizes WxH (default: the size the weights were trained at)",
    )
    p.add_argument(
        "--scheduler",
        nargs="+",
        action="extend",
        choices=SCHEDULERS,
        help="keyframe schedulers, default options (default: every)",
    )
    p.add_argument("--source", default=None, help=f"end-to-end input (default: {DEFAULT_SOURCE})")
    p.add_argument(
        "--weights",
        default=None,
        help="checkpoint for a single --model (default: the shared data's real weights where "
        "they exist, else random init)",
    )
    m = p.add_argument_group("measurement")
    m.add_argument(
        "--frames",
        type=positive_int,
        default=None,
        help=f"at most N timed frames per phase (default {SWEEP_DEFAULTS[0]}; "
        f"{TABLE_DEFAULTS[0]} with --table); with several schedulers: exactly N",
    )
    m.add_argument(
        "--min-frames",
        type=positive_int,
        default=None,
        help=f"at least N timed frames (default {SWEEP_DEFAULTS[1]}; {TABLE_DEFAULTS[1]} with --table); "
        "a phase that gets fewer, as the source ended or --max-seconds came first, says so in a note",
    )
    m.add_argument(
        "--warmup",
        type=whole_number,
        default=None,
        help=f"untimed frames first (default {SWEEP_DEFAULTS[2]}; {TABLE_DEFAULTS[2]} with --table)",
    )
    m.add_argument(
        "--max-seconds",
        type=positive_float,
        default=None,
        help=f"time limit per phase (default {SWEEP_DEFAULTS[3]:g}; {TABLE_DEFAULTS[3]:g} with --table)",
    )
    m.add_argument(
        "--ci",
        type=_fraction,
        default=0.025,
        help="stop when the median's 95%% CI half-width is within this fraction (default 0.025)",
    )
    m.add_argument("--device", default=None, help=DEVICE_HELP)
    m.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads (default: the physical cores the process may use)",
    )
    m.add_argument(
        "--encode",
        choices=ENCODINGS,
        default="jpeg",
        help="end to end: JPEG-encode each overlay on the sink thread, as a stream does (default)",
    )
    which = m.add_mutually_exclusive_group()
    which.add_argument(
        "--engine-only",
        action="store_true",
        help="skip the end-to-end measurement (one --scheduler: the engine alone does not depend on it)",
    )
    which.add_argument("--pipeline-only", action="store_true", help="skip the engine-only measurement")
    m.add_argument(
        "--in-process",
        action="store_true",
        help="measure in this process instead of a fresh one per configuration (peak RSS is then "
        "the whole process's: it includes memory that earlier configurations left allocated)",
    )
    m.add_argument("--no-progress", action="store_true")
    o = p.add_argument_group("output")
    o.add_argument(
        "--json", type=output_file, default=None, help="write the full results (bench/schema.json)"
    )
    o.add_argument(
        "--csv", type=output_file, default=None, help="write one row per configuration (or table row)"
    )
    o.add_argument("--plot", type=output_file, default=None, help="write the mIoU-vs-FPS scatter (PNG)")
    o.add_argument(
        "--table",
        choices=list(TABLES),
        default=None,
        help="print the published table and measure each row rtseg implements at its resolution",
    )
    o.add_argument(
        "--camvid",
        action="store_true",
        help="with --table: also measure ESPNet-CamVid's mIoU on the CamVid test split",
    )
    p.set_defaults(func=run)


# --ci: the relative half-width of the median's confidence interval at which to stop.
_fraction = ranged(float, "a fraction in (0, 1), like 0.025", lambda v: 0 < v < 1)


def _rule(args: argparse.Namespace) -> tuple[StopRule, int]:
    frames, min_frames, warmup, seconds = TABLE_DEFAULTS if args.table else SWEEP_DEFAULTS
    frames = args.frames if args.frames is not None else frames
    min_frames = args.min_frames if args.min_frames is not None else min(min_frames, frames)
    warmup = args.warmup if args.warmup is not None else warmup
    seconds = args.max_seconds if args.max_seconds is not None else seconds
    if frames < 1:
        raise ConfigError(f"--frames must be >= 1, got {frames}")
    if not 1 <= min_frames <= frames:
        raise ConfigError(f"--min-frames must be between 1 and --frames ({frames}), got {min_frames}")
    rule = StopRule(min_samples=min_frames, max_samples=frames, rel_halfwidth=args.ci, max_seconds=seconds)
    return rule, warmup


def _options(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for k, v in vars(args).items():
        if k == "func":
            continue
        if k == "source" and v is not None:
            v = redacted(v)  # a camera's password or a stream's token is no option to publish
        elif isinstance(v, Path):
            v = str(v)
        elif isinstance(v, list):
            v = [list(x) if isinstance(x, tuple) else x for x in v]
        out[k] = v
    return out


def _specs(
    args: argparse.Namespace, rule: StopRule, warmup: int, published: list[PublishedRow] | None
) -> list[SweepSpec]:
    common: dict[str, Any] = dict(
        backends=tuple(args.backend),
        precisions=tuple(args.precision),
        weights=args.weights,
        warmup=warmup,
        rule=rule,
        device=args.device,
        threads=args.threads,
        encode=args.encode,
        engine=not args.pipeline_only,
        pipeline=not args.engine_only,
    )
    if not args.table:
        return [
            SweepSpec(
                models=tuple(args.model or [DEFAULT_MODEL]),
                sizes=tuple(args.size) if args.size else (None,),
                schedulers=tuple(args.scheduler),
                source=args.source or DEFAULT_SOURCE,
                **common,
            )
        ]
    if args.size:
        raise ConfigError(
            "--size does not apply to --table: each row is measured at its published resolution"
        )
    if args.scheduler != ["every"]:
        raise ConfigError("--table measures the published (every-frame) setting: leave --scheduler out")
    if args.weights:
        raise ConfigError("--weights does not apply to --table: each row uses the shared data's real weights")
    rows = implemented(published or [])
    if args.model:
        # Every model asked for must have a row: the others were dropped without a word.
        have = [r.rtseg_model for r in rows]
        without = [m for m in args.model if m not in have]
        if without:
            raise ConfigError(
                f"--model {' '.join(without)}: no implemented row of the {args.table} table; "
                f"the rows it measures are {', '.join(str(m) for m in have)} (measure other models "
                "with a sweep: leave --table out)"
            )
        rows = [r for r in rows if r.rtseg_model in args.model]
    specs = []
    for row in rows:
        if row.rtseg_model is None or row.resolution is None:  # implemented() keeps neither
            continue
        w, h = row.resolution
        specs.append(
            SweepSpec(
                models=(row.rtseg_model,),
                sizes=(row.resolution,),
                schedulers=("every",),
                source=args.source or f"synthetic://drive?size={w}x{h}&fps=30&seed=0",
                **common,
            )
        )
    return specs


def run(args: argparse.Namespace) -> int:
    if args.camvid and not args.table:
        raise ConfigError("--camvid adds a CamVid row to --table: use it with --table cityscapes")
    args.backend = args.backend or ["torch"]
    args.precision = args.precision or ["fp32"]
    args.scheduler = args.scheduler or ["every"]
    for option in ("model", "backend", "precision", "size", "scheduler"):
        values = getattr(args, option) or []
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            raise ConfigError(f"--{option} lists {', '.join(twice)} more than once: {values}")
    rule, warmup = _rule(args)
    # The published table is read and checked now: found missing or malformed after measuring,
    # every result (and --json/--csv) was lost. --plot draws it without --table too.
    table_name = args.table or "cityscapes"
    table_file = table_path(table_name)
    published = load_table(table_file) if args.table or args.plot else None
    specs = _specs(args, rule, warmup, published)  # validates before the slow part
    outputs = [(f"--{option}", getattr(args, option)) for option in ("json", "csv", "plot")]
    for option, path in outputs:
        check_output(path, option)
    if args.plot is not None:
        plot_format(args.plot)
    if args.weights and not Path(args.weights).is_file():
        raise ConfigError(f"--weights {args.weights}: no such file")
    # The source's files are checked below, once it is open.
    refuse_overwrites(
        outputs,
        [("--weights", args.weights), ("the published table", None if published is None else table_file)],
    )
    if args.source and not is_live_uri(args.source):
        # Opened once now (a file, a folder, a synthetic drive: quick), not found wanting by every
        # configuration after its engine was built. Live sources are left to the run: opening a
        # camera or a stream twice costs seconds and may not be allowed.
        with open_source(args.source) as source:
            refuse_overwrites(outputs, [("--source", source.files)])
    if args.camvid:
        check_camvid()
    environment = fingerprint()
    results: list[dict[str, Any]] = []
    interrupted = False
    terminated: list[int] = []

    def terminate(signum: int, _frame: object) -> None:
        terminated.append(signum)  # SIGTERM (a kill, a job scheduler): stop as Ctrl-C does
        raise KeyboardInterrupt

    previous = take(signal.SIGTERM, terminate)
    try:
        for spec in specs:
            try:
                results += run_sweep(spec, isolated=not args.in_process, progress=not args.no_progress)
            except SweepInterrupted as exc:  # report and write what finished, as a run does
                if not results and not exc.results:
                    raise
                results += exc.results
                interrupted = True
                break
    except KeyboardInterrupt:
        if not terminated:
            raise
        print("rtseg bench: stopped (SIGTERM) before any configuration finished", file=sys.stderr)
        return 143
    finally:
        restore(signal.SIGTERM, previous)
    print(format_results(results))
    table = None
    plot_table = None
    if published is not None:
        camvid = camvid_miou(progress=not args.no_progress) if args.camvid and not interrupted else None
        doc = table_document(table_name, table_file, published, results, environment, camvid)
        if args.table:
            table = doc
            print()
            print(format_table(table))
        plot_table = doc if args.table else _any_size(doc, results, environment)
    document = build_document(
        command=_command(args), environment=environment, rule=rule, results=results, table=table
    )
    document["options"] = _options(args)
    if args.json:
        write_output(args.json, "--json", lambda p: write_json(document, p))
        print(f"wrote {args.json}")
    if args.csv:
        if table is not None:
            write_output(args.csv, "--csv", lambda p: write_table_csv(table, environment, p))
        else:
            write_output(args.csv, "--csv", lambda p: write_results_csv(results, environment, p))
        print(f"wrote {args.csv}")
    if args.plot and plot_table is not None:
        write_output(args.plot, "--plot", lambda p: plot_quality_speed(plot_table, p))
        print(f"wrote {args.plot}")
    if interrupted:
        print(
            f"rtseg bench: {'stopped (SIGTERM)' if terminated else 'interrupted'}: {len(results)} "
            "configuration(s) finished and are reported above; the rest were not measured",
            file=sys.stderr,
        )
        return 143 if terminated else 130
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} configuration(s) failed", file=sys.stderr)
        return 1
    if not any(r["status"] == "ok" for r in results):
        print("nothing was measured: every configuration was skipped (reasons above)", file=sys.stderr)
        return 2
    return 0


def _any_size(
    doc: dict[str, Any], results: list[dict[str, Any]], environment: dict[str, Any]
) -> dict[str, Any]:
    """For a sweep's plot: measured points for a row's model at whatever size was measured, each
    with its "size" (the plot joins only a point at the row's resolution to the published one);
    with --pipeline-only they have no engine FPS, and the plot draws their end-to-end FPS."""
    from ..bench.environment import hardware_line
    from ..bench.quality import NO_CITYSCAPES

    rows = []
    for row in doc["rows"]:
        measured = []
        for r in results:
            if r["config"]["model"] != row["rtseg_model"] or r["status"] != "ok":
                continue
            engine = r.get("engine") or {}
            size = r["engine_info"]["input_size"]
            measured.append(
                {
                    "label": r["label"],
                    "backend": f"{r['config']['backend']}, {size[0]}x{size[1]}",
                    "size": f"{size[0]}x{size[1]}",
                    "precision": r["config"]["precision"],
                    "status": "ok",
                    "reason": None,
                    "engine_fps": engine.get("fps"),
                    "engine_ms": (engine.get("latency_ms") or {}).get("median"),
                    "pipeline_fps": (r.get("pipeline") or {}).get("fps"),
                    "weights": r["weights"]["origin"],
                    "hardware": hardware_line(environment),
                    "miou": NO_CITYSCAPES,
                }
            )
        rows.append({**row, "measured": measured})
    return {**doc, "rows": rows}


def _command(args: argparse.Namespace) -> str:
    if sys.argv and Path(sys.argv[0]).name in ("rtseg", "__main__.py") and "bench" in sys.argv:
        return " ".join(["rtseg", *map(_shown, sys.argv[1:])])
    return "rtseg bench (called from Python)"


def _shown(word: str) -> str:
    """A word of the command line as results record it: a network URL (--source URL, --source=URL,
    or an abbreviation of the flag: argparse takes --sou) with its password and query values as
    ***, as ``redacted`` shows it."""
    flag, equals, value = word.partition("=")
    if equals and flag.startswith("--") and "://" not in flag:
        return f"{flag}={redacted(value)}"
    return redacted(word)
