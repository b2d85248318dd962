"""`rtseg run`: segment a live or recorded source into outputs; with no arguments, the offline demo."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..engine.base import Engine
from ..errors import ConfigError, RtsegError
from ..metrics import ConfusionMatrix
from ..overlay.annotate import MODES, OverlayStyle
from ..pipeline import Pipeline, PipelineStats, open_sinks
from ..schedule import CHANGES, SCHEDULERS, Scheduler, make_scheduler
from ..segmenter import Segmenter, load_engine
from ..sink import Sink
from ..source import Source, open_source, redacted
from .common import add_model_args, check_output, parse_size, positive_int

DEMO_SOURCE = "synthetic://drive?size=1280x720&fps=30&seed=0&frames=90"
DEMO_OUTPUT = "out/demo.mp4"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="segment a camera, stream, video or folder into files, a window or a stream",
        description="Segment SOURCE into each SINK. With no arguments: the offline demo (a synthetic "
        f"drive scene through the default model into {DEMO_OUTPUT}). Ctrl-C stops cleanly.",
        epilog="SOURCE: a path, file://, images://DIR-OR-GLOB, camera://N, v4l2:///dev/videoN, rtsp://, "
        "http(s)://, synthetic://drive?size=WxH&fps=N&seed=S&frames=N.  SINK: a path (.mp4, .avi, "
        "out/%06d.png), display://0, zmq://tcp://HOST:PORT, null://",
    )
    p.add_argument("source", nargs="?", default=None, help=f"input URI (default: the demo, {DEMO_SOURCE})")
    p.add_argument("sinks", nargs="*", help="output URIs (default with no source: out/demo.mp4)")
    add_model_args(p)
    p.add_argument("--backend", default="auto", help="inference backend (default: auto)")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--size", type=parse_size, default=None, help="engine input WxH (default: the weights')")
    add_scheduler_args(p, default="adaptive")
    s = p.add_argument_group("source")
    s.add_argument(
        "--realtime", action="store_true", help="pace files by the wall clock, dropping late frames"
    )
    s.add_argument("--loop", action="store_true", help="restart files and folders at their end")
    s.add_argument("--rate", type=float, default=None, help="at most this many frames per second")
    s.add_argument("--resize", type=parse_size, default=None, help="resize captured frames to WxH")
    s.add_argument("--timeout", type=float, default=10.0, help="live sources: open/read timeout, seconds")
    s.add_argument("--reconnect", type=int, default=5, help="live sources: reconnect attempts")
    s.add_argument("--frames", type=positive_int, default=None, help="stop after N frames")
    o = p.add_argument_group("output")
    o.add_argument("--mode", choices=MODES, default="overlay")
    o.add_argument("--alpha", type=float, default=0.5, help="mask weight in overlay mode")
    o.add_argument("--legend", action="store_true")
    o.add_argument("--hud", action="store_true", help="draw FPS, latency and keyframe flag")
    o.add_argument("--stats", action="store_true", help="print the per-stage cost breakdown at the end")
    o.add_argument(
        "--compare-every",
        action="store_true",
        help="also run every frame through the full model first and report the speedup and "
        "the agreement (mIoU of the scheduled labels against the per-frame labels)",
    )
    o.add_argument("--json", type=Path, default=None, help="write the summary as JSON")
    o.add_argument("--quiet", action="store_true", help="no live status line")
    p.set_defaults(func=run)


def add_scheduler_args(parser: argparse.ArgumentParser, *, default: str) -> None:
    """The keyframe-scheduling options, shared by `rtseg run` and `rtseg eval --sequence`."""
    g = parser.add_argument_group("keyframe scheduling")
    g.add_argument("--scheduler", choices=SCHEDULERS, default=default, help=f"(default: {default})")
    g.add_argument("--interval", type=int, default=None, help="clockwork: a keyframe every K frames (4)")
    g.add_argument("--threshold", type=float, default=None, help="adaptive/async: change threshold T")
    g.add_argument("--max-interval", type=int, default=None, help="adaptive/async: keyframe at least every N")
    g.add_argument(
        "--target-keyframe-rate",
        type=float,
        default=None,
        help="adaptive/async: calibrate T on the opening frames to reach this keyframe rate",
    )
    g.add_argument(
        "--warp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="warp cached deep features along DIS optical flow (default: on, except for every)",
    )
    g.add_argument(
        "--change",
        choices=CHANGES,
        default=None,
        help="adaptive/async change score: flow residual (default with --warp) or low features",
    )


def scheduler_from_args(args: argparse.Namespace) -> Scheduler:
    return make_scheduler(
        args.scheduler,
        interval=args.interval,
        threshold=args.threshold,
        max_interval=args.max_interval,
        target_keyframe_rate=args.target_keyframe_rate,
        warp=args.warp,
        change=args.change,
    )


def _source_options(args: argparse.Namespace) -> dict:
    return {
        "loop": args.loop,
        "resize": args.resize,
        "rate": args.rate,
        "realtime": args.realtime,
        "timeout": args.timeout,
        "reconnect": args.reconnect,
    }


def _every_reference(args: argparse.Namespace, engine: Engine) -> tuple[dict[int, np.ndarray], float, float]:
    """Per-frame labels of the every schedule on the same source: (labels by frame index, ms/frame, FPS)."""
    labels: dict[int, np.ndarray] = {}
    total_ms = 0.0
    seg = Segmenter(engine=engine, scheduler="every")  # its own state; the engine is shared, not closed
    start = time.perf_counter()
    with open_source(args.source, **_source_options(args)) as src:
        for n, frame in enumerate(src):
            if args.frames is not None and n >= args.frames:
                break
            r = seg(frame)
            labels[frame.index] = r.labels.copy()
            total_ms += r.latency_ms
    seconds = time.perf_counter() - start
    return labels, total_ms / max(len(labels), 1), len(labels) / max(seconds, 1e-9)


def _check_compare_every(args: argparse.Namespace, source: Source) -> None:
    """--compare-every reads the source twice and keeps every reference label map: refused (before
    the engine loads) for a source that cannot be replayed or, looping, would never end."""
    if source.info.live:
        raise ConfigError(
            "--compare-every runs the source twice: use a file, folder or synthetic source without --realtime"
        )
    if source.options.loop and args.frames is None:
        raise ConfigError(
            "--compare-every with --loop needs --frames N: the first pass would never end (and "
            "would keep every frame's labels)"
        )


def run(args: argparse.Namespace) -> int:
    demo = args.source is None
    if demo:
        args.source = DEMO_SOURCE
        args.sinks = args.sinks or [DEMO_OUTPUT]
    style = OverlayStyle(args.mode, args.alpha, args.legend, args.hud)  # validates before the slow load
    scheduler = scheduler_from_args(args)
    check_output(args.json, "--json")  # before the run, not after it: the summary would be lost
    # Opened first: a missing file or an unreachable camera is reported before the slow engine load.
    source = open_source(args.source, **_source_options(args))
    sinks: list[Sink] = []
    try:
        if args.compare_every:
            _check_compare_every(args, source)
        sinks = open_sinks(args.sinks, source)  # a bad sink URI, too, is reported before the load
        engine = load_engine(
            args.model,
            weights=args.weights,
            backend=args.backend,
            input_size=args.size,
            precision=args.precision,
        )
        engine.warmup(1)
        seg = Segmenter(engine=engine, scheduler=scheduler)
        print(
            f"rtseg run: {redacted(args.source)} -> "
            f"{', '.join(s.destination for s in sinks) or '(no outputs: results are discarded)'}",
            file=sys.stderr,
        )
        print(
            f"  {engine.info.model} on {engine.info.backend} ({engine.info.library}) at "
            f"{engine.input_size[0]}x{engine.input_size[1]}, scheduler {scheduler.describe()}",
            file=sys.stderr,
        )
        reference = every_ms = every_fps = None
        if args.compare_every:
            print("  --compare-every: first pass with every frame a keyframe ...", file=sys.stderr)
            reference, every_ms, every_fps = _every_reference(args, engine)
        n = len(engine.meta.classes)
        agreement = ConfusionMatrix(n, engine.meta.classes.ignore_index)
        missing = 0

        def compare(frame, result) -> None:
            nonlocal missing
            if reference is None:
                return
            ref = reference.get(frame.index)
            if ref is None:
                missing += 1
                return
            agreement.update(ref, result.labels_at(ref.shape))

        pipeline = Pipeline(
            source,
            seg,
            sinks=sinks,
            on_result=compare,
            style=style,
            max_frames=args.frames,
        )
    except BaseException:
        for sink in sinks:  # the pipeline owns them once made; until then they are closed here
            sink.close()
        source.close()
        raise
    tty = sys.stderr.isatty() and not args.quiet
    interrupted = False
    error: RtsegError | None = None
    last = 0.0
    with _stop_on_sigterm(pipeline) as terminated:
        try:
            for _ in pipeline:
                now = time.perf_counter()
                if tty and now - last >= 0.5:
                    last = now
                    line = pipeline.stats.status_line(pipeline.recent_fps())
                    print(f"\r{line}\x1b[K", end="", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            interrupted = True
        except RtsegError as exc:  # a source or sink failed mid-run: keep and report what was done
            error = exc
        finally:
            stats = pipeline.close()
            seg.close()
            engine.close()  # loaded here, so closed here (a Segmenter closes only the engines it loads)
    if tty:
        print(file=sys.stderr)
    if interrupted:
        print("stopped (Ctrl-C): outputs flushed, source closed", file=sys.stderr)
    elif terminated.is_set():
        print("stopped (SIGTERM): outputs flushed, source closed", file=sys.stderr)
    elif error is not None:
        print(f"stopped after {stats.frames} frames: {error}", file=sys.stderr)
    print(stats.summary())
    if args.stats:
        print(stats.format_costs())
    report = _report(stats)
    if reference is not None:
        scores = agreement.result()
        ms = sum(v for k, v in stats.stage_ms.items() if k not in ("capture", "overlay", "handoff"))
        speedup = every_ms / ms if ms else float("nan")
        print(
            f"compared with every: {every_ms:.1f} -> {ms:.1f} ms/frame inference ({speedup:.2f}x); "
            f"end-to-end {every_fps:.2f} FPS (every, no outputs) vs {stats.fps:.2f} FPS; agreement mIoU "
            f"{100 * scores.miou:.2f}, pixels {100 * scores.pixel_accuracy:.2f} % "
            f"over {stats.frames - missing} "
            "frames"
        )
        report["compare_every"] = {
            "every_ms_per_frame": _number(every_ms, 2),
            "ms_per_frame": _number(ms, 2),
            "speedup": _number(speedup, 3),
            "every_fps": _number(every_fps, 3),
            "agreement_miou": _number(100 * scores.miou, 2),
            "agreement_pixels": _number(100 * scores.pixel_accuracy, 2),
            "frames_compared": stats.frames - missing,
        }
    for uri, sink in stats.sinks.items():
        if uri.startswith(("display:", "null:", "zmq:")):
            continue
        print(f"wrote {uri} ({sink.written} frames)" if sink.written else f"nothing written to {uri}")
    if args.json:
        try:
            atomic_write_text(args.json, json.dumps(report, indent=2, allow_nan=False))
        except OSError as exc:  # checked before the run: the disk has failed since
            print(f"rtseg run: cannot write --json {args.json}: {exc}", file=sys.stderr)
            if error is None and not interrupted:
                return 2
    if error is not None:
        raise error  # after the summary and the JSON: the CLI prints it as one line, exit status 2
    if interrupted:
        return 130
    return 1 if any(s.errors for s in stats.sinks.values()) else 0


@contextmanager
def _stop_on_sigterm(pipeline: Pipeline) -> Iterator[threading.Event]:
    """SIGTERM (systemd, docker stop, ROS launch) ends the run like the end of the source: after
    the current frame, with the outputs flushed. A second SIGTERM is not caught."""
    terminated = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield terminated
        return

    def stop(signum: int, _frame: object) -> None:
        terminated.set()
        pipeline.stop()
        signal.signal(signal.SIGTERM, previous)

    previous = signal.signal(signal.SIGTERM, stop) or signal.SIG_DFL
    try:
        yield terminated
    finally:
        if not terminated.is_set():
            signal.signal(signal.SIGTERM, previous)


def _number(value: float, digits: int) -> float | None:
    """A measure for the JSON report; null where there was nothing to measure (no frames): NaN is
    not JSON, and strict parsers (jq, JavaScript, serde) refuse the whole file."""
    return round(value, digits) if math.isfinite(value) else None


def _report(stats: PipelineStats) -> dict:
    return {
        "frames": stats.frames,
        "seconds": round(stats.seconds, 3),
        "fps": round(stats.fps, 3),
        "keyframe_ratio": _number(stats.keyframe_ratio, 4),
        "latency_p50_ms": _number(stats.latency_p50_ms, 2),
        "latency_p99_ms": _number(stats.latency_p99_ms, 2),
        "source_dropped": stats.source_dropped,
        "sink_dropped": stats.sink_dropped,
        "reconnects": stats.reconnects,
        "stage_ms": {k: round(v, 3) for k, v in stats.stage_ms.items()},
        "engine_ms": round(stats.engine_ms, 3),
        "outside_ms": round(stats.outside_ms, 3),
        "sinks": {
            u: {"written": s.written, "dropped": s.dropped, "errors": s.errors}
            for u, s in stats.sinks.items()
        },
    }
