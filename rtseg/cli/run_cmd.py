"""`rtseg run`: segment a live or recorded source into outputs; with no arguments, the offline demo."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..engine.base import Engine, EngineInfo
from ..errors import ConfigError, RtsegError
from ..metrics import ConfusionMatrix
from ..models import check_model_args, load_model
from ..overlay.annotate import MODES, OverlayStyle
from ..paths import check_output
from ..pipeline import Pipeline, PipelineStats, input_clash, open_sinks
from ..schedule import Scheduler
from ..segmenter import Segmenter, load_engine
from ..signals import Handler, restore, take
from ..sink import Sink
from ..sink.file import FileSink
from ..source import Source, is_live_uri, open_source, redacted
from ..source.base import MAX_TIMEOUT_S, MIN_TIMEOUT_S
from ..source.uri import inapplicable
from ..terminal import stderr_is_tty
from .common import (
    PRECISION_HELP,
    CtrlC,
    Terminated,
    add_engine_place_args,
    add_model_args,
    engine_place,
    output_file,
    parse_size,
    positive_float,
    positive_int,
    ranged,
    refuse_overwrites,
    scheduler_flags,
    whole_number,
)
from .console import StatusLine
from .scheduler_args import add_scheduler_args, check_scheduler_size, scheduler_from_args

DEMO_SOURCE = "synthetic://drive?size=1280x720&fps=30&seed=0&frames=90"
DEMO_OUTPUT = "out/demo.mp4"
REPORT_MAX_BYTES = 1 << 20  # a --json report is a few KiB; a larger file is something else

# Ranges checked in the run's options phase (_check_ranges), so that an error names the flag
# (argument --timeout: ...), not the SourceOptions or OverlayStyle field it fills, and a refused run
# still leaves its --json report (complete false), which argparse's own exit did not write.
_timeout = ranged(
    float,
    f"a number of seconds from {MIN_TIMEOUT_S:g} to {MAX_TIMEOUT_S:.3f} (FFmpeg takes int32 milliseconds)",
    lambda v: MIN_TIMEOUT_S <= v <= MAX_TIMEOUT_S,
)
_decode_threads = ranged(int, "a whole number from 0 (one per core) to 64", lambda v: 0 <= v <= 64)
_alpha = ranged(float, "a number from 0 to 1", lambda v: 0 <= v <= 1)
_RANGES = (
    ("--rate", "rate", positive_float),
    ("--timeout", "timeout", _timeout),
    ("--reconnect", "reconnect", whole_number),
    ("--decode-threads", "decode_threads", _decode_threads),
    ("--frames", "frames", positive_int),
    ("--alpha", "alpha", _alpha),
)


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
    p.add_argument("--precision", default="fp32", help=PRECISION_HELP)
    p.add_argument("--size", type=parse_size, default=None, help="engine input WxH (default: the weights')")
    add_engine_place_args(p)
    add_scheduler_args(p, default="adaptive")
    s = p.add_argument_group("source")
    s.add_argument(
        "--realtime",
        action="store_true",
        help="pace files, folders and synthetic scenes by the wall clock, dropping late frames",
    )
    s.add_argument(
        "--loop", action="store_true", help="restart files, folders and synthetic scenes at their end"
    )
    s.add_argument(
        "--rate",
        type=float,
        default=None,
        # Not "per second" alone: a file at --rate 5 still ran at 42 FPS, as fast as it segments.
        help="keep at most this many frames per second of media time for files, folders and synthetic "
        "scenes (they still run as fast as they are segmented: add --realtime to pace them by the "
        "wall clock), per second of wall-clock time for cameras and streams",
    )
    s.add_argument("--resize", type=parse_size, default=None, help="resize captured frames to WxH")
    s.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="cameras and network URLs: open/read timeout, seconds (default 10)",
    )
    s.add_argument(
        "--reconnect",
        type=int,
        default=None,
        help="cameras and live streams: reconnect attempts (default 5)",
    )
    s.add_argument(
        "--decode-threads",
        type=int,
        default=None,
        help="live network streams: FFmpeg decoder threads, each a frame of latency (default 1; 4K "
        "H.265 needs 2 or more; 0: one per core)",
    )
    s.add_argument("--frames", type=int, default=None, help="stop after N frames")
    o = p.add_argument_group("output")
    o.add_argument("--mode", choices=MODES, default=None, help="what outputs draw (default: overlay)")
    o.add_argument("--alpha", type=float, default=None, help="mask weight in overlay mode (default 0.5)")
    o.add_argument("--legend", action="store_true")
    o.add_argument("--hud", action="store_true", help="draw FPS, latency and keyframe flag")
    o.add_argument("--stats", action="store_true", help="print the per-stage cost breakdown at the end")
    o.add_argument(
        "--compare-every",
        action="store_true",
        help="also run every frame through the full model first and report the speedup and "
        "the agreement (mIoU of the scheduled labels against the per-frame labels)",
    )
    o.add_argument(
        "--json",
        type=output_file,
        default=None,
        help="write the summary as JSON (its fields: docs/pipeline.md)",
    )
    o.add_argument("--quiet", action="store_true", help="no live status line")
    p.set_defaults(func=run)
    p.intermixed = True  # `rtseg run SRC --frames 2 out.mp4`: options between source and sinks


def _flag(keyword: str, value: object) -> str:
    """An open_source keyword as the `rtseg run` flag that fills it (decode_threads: --decode-threads)."""
    return "--" + keyword.replace("_", "-")


def _check_ranges(args: argparse.Namespace) -> None:
    for flag, dest, check in _RANGES:
        value = getattr(args, dest)
        if value is not None:
            try:
                check(repr(value))  # the flag's range, as the other commands' argparse types say it
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"argument {flag}: {exc}") from None


def _check_source_options(args: argparse.Namespace) -> None:
    """Refuse a source flag that the source cannot use (--loop or --realtime on a camera or stream,
    --timeout on a local file), naming the flag, before anything opens: it did nothing, silently.
    open_source refuses it too, naming its keyword."""
    problem = inapplicable(args.source, _source_options(args), _flag)
    if problem is not None:
        raise ConfigError(problem)


def _style(args: argparse.Namespace) -> OverlayStyle:
    """The overlay style of --mode, --alpha, --legend and --hud; OverlayStyle's defaults for those
    not given (left None, so that _overlay_flags can tell which were)."""
    given = {"mode": args.mode, "alpha": args.alpha}
    return OverlayStyle(**{k: v for k, v in given.items() if v is not None}, legend=args.legend, hud=args.hud)


def _overlay_flags(args: argparse.Namespace) -> list[str]:
    """The overlay flags given: they change only what sinks draw."""
    return [
        flag
        for flag, given in (
            ("--mode", args.mode is not None),
            ("--alpha", args.alpha is not None),
            ("--legend", args.legend),
            ("--hud", args.hud),
        )
        if given
    ]


def _warn_undrawn(args: argparse.Namespace, sinks: list[Sink]) -> None:
    """One line when overlay flags were given and no output draws (null:// only, or label maps):
    they apply to the outputs that do (files, windows, zmq://), so they are not refused."""
    flags = _overlay_flags(args)
    if flags and not any(sink.draws for sink in sinks):
        print(
            f"rtseg run: warning: {', '.join(flags)} change{'s' if len(flags) == 1 else ''} only what "
            "outputs draw, and no output here draws (null:// discards the results; "
            "null://?overlay=1 draws, to time it)",
            file=sys.stderr,
        )


def _source_options(args: argparse.Namespace) -> dict:
    return {
        "loop": args.loop,
        "resize": args.resize,
        "rate": args.rate,
        "realtime": args.realtime,
        "timeout": args.timeout,
        "reconnect": args.reconnect,
        "decode_threads": args.decode_threads,
    }


@dataclass
class _Reference:
    """The --compare-every first pass (every frame a keyframe), filled frame by frame so that what
    an interrupted pass measured is still there to report."""

    labels: dict[int, np.ndarray] = field(default_factory=dict)
    total_ms: float = 0.0
    seconds: float = 0.0
    complete: bool = False

    @property
    def ms_per_frame(self) -> float:
        return self.total_ms / len(self.labels) if self.labels else float("nan")

    @property
    def fps(self) -> float:
        return len(self.labels) / max(self.seconds, 1e-9)


def _every_reference(args: argparse.Namespace, engine: Engine, reference: _Reference) -> None:
    """Fill ``reference`` with the per-frame labels and costs of the every schedule on the source."""
    seg = Segmenter(engine=engine, scheduler="every")  # its own state; the engine is shared, not closed
    start = time.perf_counter()
    try:
        with open_source(args.source, **_source_options(args)) as src:
            for n, frame in enumerate(src):
                if args.frames is not None and n >= args.frames:
                    break
                r = seg(frame)
                reference.labels[frame.index] = r.labels.copy()
                reference.total_ms += r.latency_ms
                reference.seconds = time.perf_counter() - start
        reference.complete = True
    finally:
        reference.seconds = time.perf_counter() - start
        seg.close()


_COMPARE_EVERY_LIVE = (
    "--compare-every runs the source twice: use a file, folder or synthetic source without --realtime"
)


def _check_compare_every(args: argparse.Namespace, source: Source) -> None:
    """--compare-every reads the source twice and keeps every reference label map: refused (before
    the engine loads) for a source that cannot be replayed or, looping, would never end."""
    if source.info.live:
        raise ConfigError(_COMPARE_EVERY_LIVE)
    if args.frames is None and source.info.kind == "synthetic" and source.info.frame_count is None:
        raise ConfigError(
            "--compare-every with an endless synthetic source needs --frames N (or frames=N in its "
            "URI): the first pass would never end (and would keep every frame's labels)"
        )
    if source.options.loop and args.frames is None:
        raise ConfigError(
            "--compare-every with --loop needs --frames N: the first pass would never end (and "
            "would keep every frame's labels)"
        )


# SIGTERM (a service manager's stop) ends a run successfully, in every phase, as for `rtseg view`,
# `serve` and `train` (README); Ctrl-C is 130. An output that failed on frames or on closing is 1,
# an error that ended the run 2 (the CLI's for an RtsegError), anything else (a bug, raised as it
# is) Python's 1. The --json report's "exit_status" says which.
SIGTERM_STATUS = 0
CTRL_C_STATUS = 130
OUTPUT_FAILED_STATUS = 1
ERROR_STATUS = 2
CRASH_STATUS = 1
# The phases of a run, as the stop message names them (the --json report's "stopped.phase" is the key).
PHASES = {
    "options": "while checking the options",
    "source": "while opening the source",
    "outputs": "while opening the outputs",
    "engine": "while loading the engine",
    "compare-every": "during the --compare-every first pass",
    "main": "during the main pass",
}


class _Signals:
    """One SIGTERM handler for the whole run, so that no phase dies with the default action (a
    killed process: no message, outputs unclosed). Before the main pass a SIGTERM raises
    ``Terminated``; once ``pipeline`` is set it stops the pipeline after the current frame, with
    the outputs flushed. ``phase`` says what was running. A second SIGTERM is not caught."""

    def __init__(self) -> None:
        self.phase = "source"  # a key of PHASES
        self.pipeline: Pipeline | None = None
        self.terminated = threading.Event()
        self._previous: Handler | None = None

    def _on_sigterm(self, signum: int, _frame: object) -> None:
        self.terminated.set()
        restore(signal.SIGTERM, self._previous)
        if self.pipeline is not None:
            self.pipeline.stop()
            return
        raise Terminated

    def __enter__(self) -> _Signals:
        self._previous = take(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.terminated.is_set():
            restore(signal.SIGTERM, self._previous)


def run(args: argparse.Namespace) -> int:
    demo = args.source is None
    if demo:
        args.source = DEMO_SOURCE
        args.sinks = args.sinks or [DEMO_OUTPUT]
    check_output(args.json, "--json")  # before the run, not after it: the summary would be lost
    try:
        _check_ranges(args)
        style = _style(args)  # validates before the slow load
        check_model_args(args.model, args.weights)
        _check_source_options(args)
        engine_place(args)  # refuses --calibration without --precision int8 now, not after opening
        scheduler = scheduler_from_args(args)
        check_scheduler_size(scheduler, lambda: args.size or _weights_input_size(args))
    except Exception as exc:
        _failed_early(args, "options", exc, None, json_ok=None)
        raise
    with _Signals() as signals, CtrlC("run") as ctrl_c:
        return _run(args, style, scheduler, signals, ctrl_c)


def _weights_input_size(args: argparse.Namespace) -> tuple[int, int]:
    """The engine's input size without --size: the one stored with the weights (or the shipped
    model's), as rtseg.engine.load takes it."""
    w, h = load_model(args.model, args.weights).meta.preprocessing.input_size
    return w, h


def _check_json(path: Path | None, source: Source, sinks: list[Sink], args: argparse.Namespace) -> None:
    """Refuse a --json that is one of the source's files, the --weights or --calibration file, or a
    file sink's output (by path or as a hard link): the report, written at the end, would replace
    the input or the video just made."""
    if path is None:
        return
    refuse_overwrites([("--json", path)], [("--weights", args.weights), ("--calibration", args.calibration)])
    clash = input_clash(path, source)
    if clash is not None:
        raise ConfigError(
            f"--json {path} would overwrite {clash}, which the source {source.info.uri} reads; "
            "name another file for the report"
        )
    target = path.resolve()
    for sink in sinks:
        if isinstance(sink, FileSink) and sink.first_overwrite({target}, None) is not None:
            raise ConfigError(
                f"--json {path} is also written by the sink {sink.uri}; name another file for the report"
            )


def _run(
    args: argparse.Namespace, style: OverlayStyle, scheduler: Scheduler, signals: _Signals, ctrl_c: CtrlC
) -> int:
    source: Source | None = None
    sinks: list[Sink] = []
    engine: Engine | None = None
    seg: Segmenter | None = None
    reference: _Reference | None = None
    json_ok: bool | None = None  # --json is (not) an input or output of this run; None: not known yet
    try:
        if args.compare_every and (args.realtime or is_live_uri(args.source)):
            raise ConfigError(_COMPARE_EVERY_LIVE)  # without waiting for a camera or a server
        # Opened first: a missing file or an unreachable camera is reported before the slow engine load.
        source = open_source(args.source, **_source_options(args))
        if args.compare_every:
            _check_compare_every(args, source)
        signals.phase = "outputs"
        sinks = open_sinks(args.sinks, source)  # a bad sink URI, too, is reported before the load
        _warn_undrawn(args, sinks)
        json_ok = False
        _check_json(args.json, source, sinks, args)
        json_ok = True
        print(
            f"rtseg run: {redacted(args.source)} -> "
            f"{', '.join(s.destination for s in sinks) or '(no outputs: results are discarded)'}",
            file=sys.stderr,
        )
        signals.phase = "engine"
        print("  loading the engine ...", file=sys.stderr, flush=True)
        engine = load_engine(
            args.model,
            weights=args.weights,
            backend=args.backend,
            input_size=args.size,
            precision=args.precision,
            **engine_place(args),
        )
        engine.warmup(1)
        with scheduler_flags():  # as Segmenter would, but naming --flow-stride, not flow_stride
            scheduler.check(engine)
        seg = Segmenter(engine=engine, scheduler=scheduler)
        print(
            f"  {engine.info.model} on {engine.info.backend} {engine.info.precision} {engine.info.device} "
            f"({engine.info.library}) at {engine.input_size[0]}x{engine.input_size[1]}, "
            f"scheduler {scheduler.describe()}",
            file=sys.stderr,
            flush=True,
        )
        if args.compare_every:
            signals.phase = "compare-every"
            print(
                "  --compare-every: first pass with every frame a keyframe ...", file=sys.stderr, flush=True
            )
            reference = _Reference()
            _every_reference(args, engine, reference)
        n = len(engine.meta.classes)
        agreement = ConfusionMatrix(n, engine.meta.classes.ignore_index)
        missing = 0

        def compare(frame, result) -> None:
            nonlocal missing
            if reference is None:
                return
            ref = reference.labels.get(frame.index)
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
        signals.phase = "main"
        signals.pipeline = pipeline  # from here a SIGTERM stops after the current frame
        ctrl_c.closing = lambda: pipeline.closed  # the source's end closes the outputs, too
    except (KeyboardInterrupt, Terminated) as exc:
        _close(sinks, source, seg, engine)
        by = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else "SIGTERM"
        return _stopped_early(args, signals.phase, by, reference, json_ok=json_ok)
    except BaseException as exc:
        _close(sinks, source, seg, engine)  # the pipeline owns them once made; until then, closed here
        _failed_early(args, signals.phase, exc, reference, json_ok=json_ok)
        raise
    status = StatusLine() if stderr_is_tty() and not args.quiet else None
    interrupted = False
    error: RtsegError | None = None
    crash: BaseException | None = None
    last = 0.0
    try:
        for _ in pipeline:
            now = time.perf_counter()
            if status is not None and now - last >= 0.5:
                last = now
                status.show(pipeline.stats.status_line(pipeline.recent_fps()))
    except KeyboardInterrupt:
        interrupted = True
    except RtsegError as exc:  # a source or sink failed mid-run: keep and report what was done
        error = exc
    except BaseException as exc:  # anything else (a bug): raised as it is, after the report
        crash = exc
    finally:
        stats = pipeline.close()
        _close([], None, seg, engine)  # loaded here, so closed here (a Segmenter closes only its own)
    if crash is not None:
        if args.json:  # an earlier run's report must not stay there as this one's
            report = {
                **_report(stats),
                "engine": _engine_report(engine.info, scheduler),
                "complete": False,
                "exit_status": CRASH_STATUS,
                "error": f"{type(crash).__name__}: {crash}",
            }
            _write_json(args.json, report)
        raise crash
    terminated = signals.terminated.is_set()  # later ones (while reporting) change nothing
    if status is not None:
        status.end()
    if interrupted or terminated:
        by = "Ctrl-C" if interrupted else "SIGTERM"
        print(
            f"stopped ({by}) {PHASES['main']} after {stats.frames} frames: outputs flushed, source closed",
            file=sys.stderr,
        )
    elif error is not None:
        print(f"stopped after {stats.frames} frames: {error}", file=sys.stderr)
    print(stats.summary())
    if args.stats:
        print(stats.format_costs())
    report = _report(stats)
    report["engine"] = _engine_report(engine.info, scheduler)
    if error is not None:
        status = ERROR_STATUS
    elif interrupted:
        status = CTRL_C_STATUS
    elif any(s.errors for s in stats.sinks.values()):
        status = OUTPUT_FAILED_STATUS
    else:
        status = SIGTERM_STATUS if terminated else 0
    # Ran to its end (the source's or --frames) with every output whole: not a run that exits 1
    # because its outputs refused every frame (a file size limit), nor one stopped by SIGTERM (0).
    report["complete"] = status == 0 and not terminated
    report["exit_status"] = status
    if interrupted or terminated:
        report["stopped"] = {"by": "Ctrl-C" if interrupted else "SIGTERM", "phase": "main"}
    if error is not None:
        report["error"] = str(error)
    if reference is not None:
        scores = agreement.result()
        every_ms, every_fps = reference.ms_per_frame, reference.fps
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
    # stats.sinks holds every sink, in order (a repeated URI labelled "#2"); windows and streams keep nothing
    for (uri, sink), output in zip(stats.sinks.items(), pipeline.sinks, strict=True):
        if not isinstance(output, FileSink):
            continue
        if not sink.written:
            print(f"nothing written to {uri}")
            continue
        if sink.close_error is not None:  # e.g. an .mp4 whose index a full disk kept out: no frame opens
            print(f"not written whole: {uri} ({sink.written} frames sent to it; closing failed, see above)")
            continue
        # A timed video (live or --realtime source) holds each frame until the next one's time.
        held = output.video_frames or 0
        timed = f" over {held} video frames at {output.fps:g} FPS" if held > sink.written else ""
        print(f"wrote {uri} ({sink.written} frames{timed})")
    if args.json and not _write_json(args.json, report) and error is None and not interrupted:
        return 2
    if error is not None:
        raise error  # after the summary and the JSON: the CLI prints it as one line, exit status 2
    return status


def _close(sinks: list[Sink], source: Source | None, seg: Segmenter | None, engine: Engine | None) -> None:
    """Close what a run opened, outputs first: a video's index is written on close (an .mp4 left
    unclosed is unreadable)."""
    for sink in sinks:
        sink.close()
    if source is not None:
        source.close()
    if seg is not None:
        seg.close()
    if engine is not None:
        engine.close()


def _write_json(path: Path, report: dict) -> bool:
    """Write --json whole (never half a file); False, said on stderr, when the disk has failed since
    it was checked before the run."""
    try:
        atomic_write_text(path, json.dumps(report, indent=2, allow_nan=False))
    except OSError as exc:  # strerror: the exception's text names the temporary file, not ``path``
        print(f"rtseg run: cannot write --json {path}: {exc.strerror or exc}", file=sys.stderr)
        return False
    return True


def _early_report(reference: _Reference | None) -> tuple[str, dict]:
    """What a run that ended before its main pass did: a line for stderr and the --json report,
    marked incomplete (a report of an earlier run must not be left there as this one's)."""
    detail = "the main pass did not run; outputs closed, nothing written to them"
    report: dict = {"complete": False, "frames": 0}
    if reference is not None:
        done = len(reference.labels)
        if done:
            detail = (
                f"after {done} frames (every frame a keyframe: {reference.ms_per_frame:.1f} ms/frame, "
                f"{reference.fps:.2f} FPS); {detail}"
            )
        report["compare_every"] = {
            "complete": False,
            "every_frames": done,
            "every_ms_per_frame": _number(reference.ms_per_frame, 2),
            "every_fps": _number(reference.fps, 3) if done else None,
        }
    return detail, report


def _stopped_early(
    args: argparse.Namespace, phase: str, by: str, reference: _Reference | None, *, json_ok: bool | None
) -> int:
    """A Ctrl-C or SIGTERM before the main pass: one line naming the phase, what the first pass had
    measured, and a --json report marked incomplete."""
    detail, report = _early_report(reference)
    report["exit_status"] = CTRL_C_STATUS if by == "Ctrl-C" else SIGTERM_STATUS
    report["stopped"] = {"by": by, "phase": phase}
    print(f"rtseg run: stopped ({by}) {PHASES[phase]}: {detail}", file=sys.stderr)
    if args.json:
        _write_early_json(args.json, report, json_ok)
    return CTRL_C_STATUS if by == "Ctrl-C" else SIGTERM_STATUS


def _failed_early(
    args: argparse.Namespace,
    phase: str,
    error: BaseException,
    reference: _Reference | None,
    *,
    json_ok: bool | None,
) -> None:
    """An error before the main pass (a bad option, source or sink, missing weights, a source that
    fails in the --compare-every first pass): what the first pass had measured, as after a
    Ctrl-C, and a --json report saying what failed; the caller then raises the error itself."""
    detail, report = _early_report(reference)
    report["exit_status"] = ERROR_STATUS if isinstance(error, RtsegError) else CRASH_STATUS
    report["error"] = str(error) if isinstance(error, RtsegError) else f"{type(error).__name__}: {error}"
    report["stopped"] = {"by": "error", "phase": phase}
    if reference is not None and reference.labels:
        print(f"rtseg run: stopped by an error {PHASES[phase]}: {detail}", file=sys.stderr)
    if args.json:
        _write_early_json(args.json, report, json_ok)


def _write_early_json(path: Path, report: dict, ok: bool | None) -> None:
    """Write the report of a run that ended early: never over the source's files or an output
    (``ok`` False), and before --json was checked against them (``ok`` None: the source or a sink
    failed to open) only over an earlier run's report, as the path may be a file the user meant
    to keep."""
    if ok is False:
        return
    if ok or _replaceable(path):
        _write_json(path, report)
    else:
        print(
            f"rtseg run: --json {path} left as it is: it is not a report of an earlier run", file=sys.stderr
        )


def _replaceable(path: Path) -> bool:
    """Whether ``path`` is free or holds a `rtseg run --json` report (a JSON object with "complete")."""
    try:
        if not path.exists():
            return True
        if not path.is_file() or path.stat().st_size > REPORT_MAX_BYTES:
            return False
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "complete" in data


def _number(value: float, digits: int) -> float | None:
    """A measure for the JSON report; null where there was nothing to measure (no frames): NaN is
    not JSON, and strict parsers (jq, JavaScript, serde) refuse the whole file."""
    return round(value, digits) if math.isfinite(value) else None


def _engine_report(info: EngineInfo, scheduler: Scheduler) -> dict:
    """What produced the numbers: an int8 run's report read the same as an fp32 one's."""
    return {
        "model": info.model,
        "backend": info.backend,
        "precision": info.precision,
        "device": info.device,
        "input_size": list(info.input_size),
        "library": info.library,
        "threads": info.threads,
        "scheduler": scheduler.describe(),
    }


def _report(stats: PipelineStats) -> dict:
    return {
        "frames": stats.frames,
        "seconds": round(stats.seconds, 3),
        "fps": round(stats.fps, 3),
        "keyframe_ratio": _number(stats.keyframe_ratio, 4),
        "latency_p50_ms": _number(stats.latency_p50_ms, 2),
        "latency_p99_ms": _number(stats.latency_p99_ms, 2),
        # all the frames, or the newest LATENCY_WINDOW of a longer run: FPS and the rest cover all
        "latency_frames": stats.frames if stats.latency_frames is None else stats.latency_frames,
        "source_dropped": stats.source_dropped,
        "sink_dropped": stats.sink_dropped,
        "reconnects": stats.reconnects,
        "stage_ms": {k: round(v, 3) for k, v in stats.stage_ms.items()},
        "engine_ms": round(stats.engine_ms, 3),
        "outside_ms": round(stats.outside_ms, 3),
        "worker_deep_ms": round(stats.worker_deep_ms, 3),  # per frame, on the async worker (off the loop)
        "sinks": {
            u: {
                "written": s.written,
                "dropped": s.dropped,
                "errors": s.errors,
                "last_error": s.last_error,  # what the summary prints: why the run exits 1
                "close_error": s.close_error,  # set: the output is not whole, whatever "written" says
                "emit_ms": round(s.emit_ms, 3),  # in all, on the sink's own thread
            }
            for u, s in stats.sinks.items()
        },
    }
