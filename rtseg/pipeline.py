"""``Pipeline``: source -> segmenter -> sinks, as an iterator or a callback loop, with live statistics.

The inference thread only captures, segments and hands packets to the sinks' queues; drawing and
encoding happen on the sinks' threads (``Packet.overlay()``). Sinks drop frames for live sources
(never delaying inference) and block for files and other media sources (every frame written).
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, InputTypeError, RtsegError, SinkError
from .overlay.annotate import MODES, OverlayStyle
from .result import SegResult
from .schedule import Scheduler
from .segmenter import Segmenter, as_scheduler
from .sink import Sink, SinkStats, open_sink
from .sink.base import Policy
from .sink.file import FileSink, file_clash
from .sink.packet import Packet
from .source import Frame, Source, open_source
from .window import DEFAULT_CAPACITY, RecentSamples

log = logging.getLogger(__name__)

# Per-frame cost accounting: what runs on the inference thread, and what the engine does.
ENGINE_STAGES = ("low", "deep", "head")
SCHEDULER_STAGES = ("change", "warp")
OUTSIDE_STAGES = ("capture", "preprocess", "overlay", "handoff")

Callback = Callable[[Frame, SegResult], Any]


def input_clash(path: Path, source: Source) -> Path | None:
    """The file of ``source`` that writing ``path`` would replace: the same resolved path, or the
    same file under another name (a hard link)."""
    return file_clash(path, source.files)


def _refuse_overwriting(source: Source, sinks: Sequence[Sink]) -> None:
    """A file sink that would write over a file the source reads destroys the input mid-run."""
    inputs = {p.resolve() for p in map(Path, source.files)}
    if not inputs:
        return
    frames = None if source.options.loop else len(inputs)  # a looping source's indices never end
    for sink in sinks:
        if not isinstance(sink, FileSink):
            continue
        clash = sink.first_overwrite(inputs, frames)
        if clash is not None:
            raise SinkError(f"{sink.uri}: would overwrite {clash}, which the source {source.info.uri} reads")


def _refuse_duplicates(sinks: Sequence[Sink]) -> None:
    """Two file sinks writing one file (o.mp4, ./o.mp4, file://o.mp4, a hard link; image patterns
    naming one file, as f/%d.png and f/%01d.png) interleave two writers in it: refused, whatever
    the spelling."""
    seen: list[FileSink] = []
    for sink in sinks:
        if not isinstance(sink, FileSink):
            continue
        for earlier in seen:
            if earlier.pattern != sink.pattern:
                continue  # a video and an image pattern never share a name (their suffixes differ)
            if sink.pattern:
                shared = earlier.shared_image(sink)  # by the names written: %d and %01d are one
                same, both = shared is not None, f" (both write {shared})"
            else:
                target = sink.path.resolve()
                same = earlier.first_overwrite({target}, 1) is not None  # by path or identity
                both = ""
            if same:
                raise SinkError(
                    f"{sink.uri}: the same output as {earlier.uri}{both}; two sinks cannot write one file"
                )
        seen.append(sink)


def sink_policy(source: Source) -> Policy:
    """Behind a live source a slow sink drops frames (never delaying inference); behind a file it
    blocks, so that every frame is written."""
    return "drop" if source.info.live else "block"


def output_fps(source: Source) -> float | None:
    """The frame rate of the frames the source delivers: ``rate`` thins them, so a video written at
    the source's own rate would play that much too fast. (Frames dropped to stay live are made up
    for by the video file sink, ``timed``.)"""
    fps, rate = source.info.fps, source.options.rate
    if rate is None:
        return fps
    return rate if fps is None else min(fps, rate)


SinkArg = Sink | str | os.PathLike[str]


def sink_list(sinks: SinkArg | Iterable[SinkArg]) -> list:
    """``sinks`` as a list: one URI, path or Sink is one sink (a string is not iterated letter by
    letter); a TypeError for what is none of those nor an iterable of them (checked by
    ``open_sinks``)."""
    if isinstance(sinks, (str, os.PathLike, Sink)):
        return [sinks]
    if isinstance(sinks, (bytes, bytearray)) or not isinstance(sinks, Iterable):
        raise InputTypeError(
            f"sinks must be a URI, a path, a Sink or a list of them, got {type(sinks).__name__}"
        )
    return list(sinks)


def open_sinks(sinks: SinkArg | Iterable[SinkArg], source: Source) -> list[Sink]:
    """Open the sink URIs for ``source``, refusing any that would write over the source's files or
    another sink's file; on failure, the ones opened are closed. Every sink, opened here or given
    opened, takes ``sink_policy``, ``output_fps`` and the timing where its maker set none
    (``Sink.follow_pipeline``): behind a source that drops frames (live, realtime) videos are
    ``timed``: written at ``output_fps`` with every frame at its capture time, they play as long
    as the run lasted, not faster."""
    policy = sink_policy(source)
    fps = output_fps(source)
    timed = source.info.live
    opened: list[Sink] = []
    try:
        for sink in sink_list(sinks):
            if isinstance(sink, (str, os.PathLike)):
                sink = open_sink(sink)
            elif not isinstance(sink, Sink):
                raise InputTypeError(
                    f"sinks: each must be a URI (str), a path (os.PathLike) or a Sink, got {sink!r} "
                    f"({type(sink).__name__})"
                )
            opened.append(sink)
            sink.follow_pipeline(policy=policy, fps=fps, timed=timed)
        _refuse_overwriting(source, opened)
        _refuse_duplicates(opened)
    except BaseException:
        for sink in opened:
            sink.close()
        raise
    return opened


def sink_labels(sinks: Sequence[Sink]) -> list[str]:
    """One distinct name per sink, for statistics: its URI, and for a URI that an earlier sink
    already has (two user sinks labelled "ros://cam", two null://) the URI and "#2", "#3": keyed
    by URI alone, one sink's counts and errors replaced the other's."""
    taken = {s.uri for s in sinks}
    labels: list[str] = []
    for sink in sinks:
        label, n = sink.uri, 1
        while label in labels or (n > 1 and label in taken):
            n += 1
            label = f"{sink.uri} #{n}"
        labels.append(label)
    return labels


def _frame_limit(max_frames: object) -> int | None:
    """``max_frames`` checked before anything opens: -1 ran no frame, 2.5 ran 3, True 1, NaN had
    no limit and "3" failed mid-run. A run of 0 frames does nothing (as ``rtseg run --frames``,
    it is refused); None is no limit."""
    if max_frames is None:
        return None
    if isinstance(max_frames, numbers.Integral) and not isinstance(max_frames, bool) and max_frames >= 1:
        return int(max_frames)  # a NumPy integer is one too
    raise ConfigError(
        f"max_frames must be None (no limit) or a whole number >= 1, got {max_frames!r} "
        f"({type(max_frames).__name__})"
    )


def _is_async(call: object) -> bool:
    """An ``async def`` function (or async generator function), a partial of one, or an object
    whose ``__call__`` is one: called, it returns a coroutine (or async generator) and runs nothing."""
    return any(
        inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f)
        for f in (call, type(call).__call__)  # an instance: its class's method
    )


def _close_quietly(closable: Sink | Source) -> None:
    """Close while another error is on its way: a failure here is logged, not raised over it."""
    try:
        closable.close()
    except Exception as exc:
        log.error("closing %r also failed: %s", closable, exc)


def _close_all(sinks: list[Sink], source: Source) -> None:
    """The finalizer of a Pipeline that was never closed: outputs first, then the source."""
    for closable in [*sinks, source]:
        _close_quietly(closable)


@dataclass(frozen=True)
class PipelineStats:
    frames: int
    keyframes: int
    seconds: float  # wall time since the first frame was requested
    fps: float  # over the whole run
    latency_p50_ms: float  # capture -> result
    latency_p99_ms: float
    source_dropped: int
    sink_dropped: int
    reconnects: int
    stage_ms: dict[str, float]  # mean ms per frame
    sinks: dict[str, SinkStats] = field(default_factory=dict)  # by sink_labels, in the sinks' order
    worker_deep_ms: float = 0.0  # async scheduler: mean deep ms per frame on the worker thread
    # The frames the latency percentiles cover: all, or the newest LATENCY_WINDOW of a longer run
    # (while running, the last LIVE_LATENCY_FRAMES); None: not said (all).
    latency_frames: int | None = None

    @property
    def keyframe_ratio(self) -> float:
        return self.keyframes / self.frames if self.frames else float("nan")

    @property
    def engine_ms(self) -> float:
        return sum(self.stage_ms.get(s, 0.0) for s in ENGINE_STAGES)

    @property
    def outside_ms(self) -> float:
        return sum(self.stage_ms.get(s, 0.0) for s in OUTSIDE_STAGES)

    @property
    def scheduler_ms(self) -> float:
        return sum(self.stage_ms.get(s, 0.0) for s in SCHEDULER_STAGES)

    def status_line(self, recent_fps: float | None = None) -> str:
        fps = self.fps if recent_fps is None else recent_fps
        return (
            f"{self.frames} frames  {fps:5.1f} FPS  latency p50 {self.latency_p50_ms:6.1f} ms "
            f"p99 {self.latency_p99_ms:6.1f} ms  keyframes {100 * self.keyframe_ratio:5.1f} %  "
            f"drops {self.source_dropped + self.sink_dropped}"
        )

    def format_costs(self) -> str:
        """The per-stage cost breakdown printed by ``rtseg run --stats``."""
        labels = {
            "capture": "capture",
            "preprocess": "preprocess (resize)",
            "low": "engine: low",
            "deep": "engine: deep",
            "head": "engine: head",
            "change": "scheduler: change score",
            "warp": "scheduler: flow warp",
            "overlay": "overlay (sink thread)",
            "handoff": "sink hand-off",
        }
        lines = ["per-frame cost (mean ms over all frames; deep only runs on keyframes):"]
        for key in ("capture", "preprocess", "low", "change", "deep", "warp", "head", "overlay", "handoff"):
            if key in self.stage_ms:
                lines.append(f"  {labels[key]:<26}{self.stage_ms[key]:9.2f}")
        if self.worker_deep_ms:
            lines.append(f"  {'deep on the async worker':<26}{self.worker_deep_ms:9.2f}")
        for uri, s in self.sinks.items():
            if s.written:
                lines.append(
                    f"  {'sink thread ' + uri:<26}{s.emit_ms / s.written:9.2f}  (draw + encode + write)"
                )
        engine = self.engine_ms
        outside = self.outside_ms
        share = f"{100 * outside / engine:.1f} %" if engine else "n/a"
        lines.append(
            f"  engine total {engine:.2f} ms; outside the engine (capture, preprocess, overlay, "
            f"hand-off) {outside:.2f} ms = {share} of engine time"
        )
        scheduling = self.scheduler_ms
        if scheduling:  # the scheduler's own work, on the inference thread (what it saves is in deep)
            share = f"{100 * scheduling / engine:.1f} %" if engine else "n/a"
            lines.append(
                f"  the scheduler (change score, flow warp) on the inference thread {scheduling:.2f} ms "
                f"= {share} of engine time"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        window = ""
        if self.latency_frames is not None and self.latency_frames < self.frames:
            window = f" over the last {self.latency_frames:,} frames"  # FPS and the rest: all frames
        lines = [
            f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.2f} FPS), keyframe ratio "
            f"{self.keyframe_ratio:.3f}, latency p50 {self.latency_p50_ms:.1f} ms / "
            f"p99 {self.latency_p99_ms:.1f} ms{window}",
            f"dropped: {self.source_dropped} at the source, {self.sink_dropped} at sinks; "
            f"reconnects: {self.reconnects}",
        ]
        for uri, s in self.sinks.items():
            err = f", {s.errors} errors (last: {s.last_error})" if s.errors else ""
            lines.append(f"sink {uri}: {s.written} written, {s.dropped} dropped{err}")
        return "\n".join(lines)


LIVE_LATENCY_FRAMES = 1000  # the frames a running pipeline's latency percentiles cover
# The frames a closed pipeline's latency percentiles cover, the newest of a longer run: memory and
# the cost of the percentiles stay flat over days (about 55 minutes at 30 FPS). The summary and
# `--json` (latency_frames) say so once a run is longer.
LATENCY_WINDOW = DEFAULT_CAPACITY


class _Meter:
    """Running sums per stage plus recent latencies; the overlay time arrives from sink threads."""

    def __init__(self) -> None:
        # Reentrant: close() from a signal handler that interrupted this thread's record() takes
        # the statistics (a plain lock waited for itself, forever).
        self.lock = threading.RLock()
        self.sums: dict[str, float] = {}
        self.frames = 0
        self.keyframes = 0
        self.overlays = 0
        self.latencies = RecentSamples(LATENCY_WINDOW)
        self.done: deque[float] = deque(maxlen=64)
        self.start = time.perf_counter()
        self.end: float | None = None

    def add_overlay(self, ms: float) -> None:
        with self.lock:
            self.sums["overlay"] = self.sums.get("overlay", 0.0) + ms
            self.overlays += 1

    def record(self, result: SegResult, capture_ms: float, handoff_ms: float, latency_ms: float) -> None:
        with self.lock:
            self.frames += 1
            self.keyframes += int(result.is_keyframe)
            for k, v in result.timings.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
            self.sums["capture"] = self.sums.get("capture", 0.0) + capture_ms
            self.sums["handoff"] = self.sums.get("handoff", 0.0) + handoff_ms
            self.latencies.add(latency_ms)
            self.done.append(time.perf_counter())

    def recent_fps(self) -> float:
        with self.lock:
            if len(self.done) < 2:
                return 0.0
            return (len(self.done) - 1) / max(self.done[-1] - self.done[0], 1e-9)


def read_only(frame: Frame, result: SegResult) -> tuple[Frame, SegResult]:
    """The frame and result with read-only views of their arrays (no copy)."""
    image, labels = frame.image.view(), result.labels.view()
    image.flags.writeable = labels.flags.writeable = False
    return replace(frame, image=image), replace(result, labels=labels)


class Pipeline:
    """Runs ``source`` through ``segmenter`` into ``sinks``.

    ``source`` and ``sinks`` may be URIs or paths (see ``open_source`` / ``open_sink``) or opened
    objects, one sink also alone (``sinks="out.mp4"``); the pipeline closes them when it ends (or
    fails to start), and when it is dropped or the interpreter exits unclosed. Iterate it for
    ``(frame, result)`` pairs, or call ``run()``, once: the run closes the source and sinks.
    ``on_result(frame, result)`` is called for every frame either way. With sinks, the image and
    labels it and the iteration get are read-only: the sinks draw from them later, on their own
    threads, and a change made meanwhile would show in some recorded frames and not in others
    (copy to draw). The segmenter's scheduling state is reset when the run starts (a new source is
    a new stream); ``scheduler`` replaces its scheduler (the old one is closed) once everything
    else has opened: a pipeline that cannot start leaves the segmenter's scheduler as it was. The
    segmenter is not closed: it is yours. It serves one running pipeline at a time (one stream's
    schedule): a second started meanwhile is refused (ConfigError) and closed; give each stream
    its own Segmenter (they can share one engine, ``Segmenter(engine=...)``).
    """

    def __init__(
        self,
        source: Source | str | os.PathLike[str],
        segmenter: Segmenter,
        *,
        sinks: SinkArg | Iterable[SinkArg] = (),
        on_result: Callback | None = None,
        scheduler: str | Scheduler | None = None,
        style: OverlayStyle | None = None,
        max_frames: int | None = None,
        source_options: dict[str, Any] | None = None,
    ) -> None:
        self.sinks: list[Sink] = []
        self.source: Source = source  # type: ignore[assignment]  # opened below for a URI or a path
        wanted: list = []
        try:
            wanted = sink_list(sinks)  # a generator is read once, here
            # Checked before anything opens: a wrong argument would otherwise surface later as an
            # AttributeError (a Path's .close, None's .reset) with the outputs left open.
            if not isinstance(segmenter, Segmenter):
                raise InputTypeError(f"segmenter must be a rtseg.Segmenter, got {type(segmenter).__name__}")
            if on_result is not None and not callable(on_result):
                # else it failed at frame 0, already segmented and written
                raise InputTypeError(
                    f"on_result must be None or a callable taking (frame, result), got {on_result!r} "
                    f"({type(on_result).__name__})"
                )
            if on_result is not None and _is_async(on_result):
                # called, it returned a coroutine nobody awaited: the body never ran (a RuntimeWarning)
                raise InputTypeError(
                    f"on_result must be a plain callable, got {on_result!r}, an async one: it is called "
                    "synchronously on the pipeline's thread, and its body would never run; pass a "
                    "def function (from it, asyncio.run_coroutine_threadsafe(cb(frame, result), loop) "
                    "hands the work to your event loop)"
                )
            if style is not None and not isinstance(style, OverlayStyle):
                # else a sink failed at frame 0 (style.hud), and without sinks it went unnoticed
                raise InputTypeError(
                    f"style must be None or a rtseg.overlay.OverlayStyle, got {style!r} "
                    f"({type(style).__name__}); pass style=rtseg.overlay.OverlayStyle(mode=...), the "
                    f"mode one of {MODES}"
                )
            max_frames = _frame_limit(max_frames)
            # A name is made a Scheduler (a misspelt one refused) before anything opens; it is put
            # in the segmenter's hands last, once nothing else can fail (see below).
            chosen = None if scheduler is None else as_scheduler(scheduler)
            if chosen is not None:
                chosen.check(segmenter.engine)
            if isinstance(source, (str, os.PathLike)):
                self.source = open_source(source, **(source_options or {}))
            elif not isinstance(source, Source):
                raise InputTypeError(
                    "source must be a URI (str), a path (os.PathLike) or a Source, "
                    f"got {type(source).__name__}"
                )
            elif source_options:
                raise ConfigError(
                    "source_options apply when source is a URI or a path; this Source is already "
                    f"open with its own options: pass {sorted(source_options)} to open_source instead"
                )
            self.policy = sink_policy(self.source)
            self.sinks = open_sinks(wanted, self.source)
            # Last: a pipeline that cannot start (a sink that cannot open) must leave the segmenter
            # with its own scheduler, not one swapped in and the user's closed.
            if chosen is not None:
                segmenter.claim(self)  # not under another pipeline's running stream
                try:
                    segmenter.use_scheduler(chosen)
                finally:
                    segmenter.release(self)
        except BaseException:
            # What was given and what was opened is the pipeline's to close (open_sinks closed what
            # it opened if it failed itself); a failing close must not hide this error.
            given = [s for s in wanted if isinstance(s, Sink) and s not in self.sinks]
            for sink in [*self.sinks, *given]:
                _close_quietly(sink)
            if isinstance(self.source, Source):
                _close_quietly(self.source)
            raise
        self.segmenter = segmenter
        self.on_result = on_result
        self.style = OverlayStyle() if style is None else style
        self.max_frames = max_frames
        self._meter = _Meter()
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._close_lock = threading.RLock()  # reentrant: close() from a signal handler
        self._closer: threading.Thread | None = None  # the thread of the first close()
        # The thread running the loop, and whether it is inside _step (reading, segmenting,
        # writing: holding the source's, the segmenter's or a sink's locks). A close() there can
        # only come from a signal handler that interrupted it: it cannot close under the step.
        self._runner: threading.Thread | None = None
        self._stepping = False
        self._close_done = threading.Event()  # the first close() has finished: outputs closed
        self._final: PipelineStats | None = None
        # A pipeline dropped unfinished, or still held at exit (``it = iter(p)``, then the script
        # ends), has its outputs closed: a video is unreadable until its index is written on close.
        # At exit this runs from atexit, while the sinks' (daemon) threads still run.
        self._finalizer = weakref.finalize(self, _close_all, list(self.sinks), self.source)

    def stop(self) -> None:
        """Ask the loop to end after the current frame (safe from any thread or a callback, and
        from a signal handler: a source waiting for its next frame's time returns at once)."""
        self._stop.set()
        self.source._interrupt()  # a --realtime or --rate wait lasts up to 1/rate or 1/fps seconds

    def __iter__(self) -> Iterator[tuple[Frame, SegResult]]:
        """``(frame, result)`` pairs; once per Pipeline, from one thread (the source is read in order)."""
        with self._start_lock:
            if self._closed:
                raise ConfigError(
                    "this Pipeline has ended and closed its source and sinks; make a new Pipeline "
                    "to run again"
                )
            if self._started:
                raise ConfigError(
                    "this Pipeline is already running (a Pipeline is iterated once, from one thread); "
                    "make a new Pipeline for another run"
                )
            self._started = True
        try:
            # One stream at a time: a second running pipeline would mix its frames into this one's
            # schedule (released by close(), at the run's end).
            self.segmenter.claim(self)
            # A new source is a new stream: no deep features or keyframe reference from the last one.
            self.segmenter.reset()
        except BaseException as exc:  # the run cannot start (an async scheduler's failed deep job)
            self._close_after(exc)  # nothing is left open
            raise
        return self._frames()

    def _frames(self) -> Iterator[tuple[Frame, SegResult]]:
        meter = self._meter
        meter.start = time.perf_counter()
        failure: BaseException | None = None  # what ended the loop, if not its end or a break
        self._runner = threading.current_thread()
        try:
            while not self._stop.is_set():
                if self.max_frames is not None and meter.frames >= self.max_frames:
                    break
                if any(s.stop_requested for s in self.sinks):
                    break
                try:
                    self._stepping = True
                    step = self._step(meter)
                except RtsegError:
                    # close() from another thread, or a signal handler's: the end, not a failure
                    if self._closed:
                        break
                    raise
                finally:
                    self._stepping = False
                if step is None or self._closed:  # the end, or closed meanwhile: not handed out
                    break
                frame, result = step
                if self.on_result is not None:
                    self.on_result(frame, result)
                yield frame, result
        except GeneratorExit:  # the caller left the loop: an end like any other
            raise
        except BaseException as exc:
            failure = exc
            raise
        finally:
            meter.end = time.perf_counter()
            # Not once closed, nor when the finalizer closed the outputs at exit: this generator is
            # then finalised in the interpreter's teardown, where the statistics cannot be computed.
            if self._finalizer.alive:
                self._close_after(failure)

    def _step(self, meter: _Meter) -> tuple[Frame, SegResult] | None:
        """Read, segment and hand one frame to the sinks; None at the end of the source. It is
        counted before it is handed out, so that statistics taken by a close() from another
        thread hold every frame the loop yielded."""
        t0 = time.perf_counter()
        frame = next(self.source, None)
        if frame is None:
            return None
        capture_ms = (time.perf_counter() - t0) * 1000.0
        result = self.segmenter(frame)
        done = time.perf_counter()
        t0 = time.perf_counter()
        if self.sinks:
            fps = (meter.recent_fps() or None) if self.style.hud else None
            packet = Packet(frame, result, self.style, fps, on_overlay=meter.add_overlay)
            for sink in self.sinks:
                sink.write(packet)
            frame, result = read_only(frame, result)
        handoff_ms = (time.perf_counter() - t0) * 1000.0
        meter.record(result, capture_ms, handoff_ms, (done - frame.monotonic) * 1000.0)
        return frame, result

    def run(self) -> PipelineStats:
        """Process until the source ends, ``stop()`` is called or ``max_frames`` is reached."""
        for _ in self:
            pass
        return self.stats

    def recent_fps(self) -> float:
        return self._meter.recent_fps()

    @property
    def stats(self) -> PipelineStats:
        """While running, latency p50/p99 are those of the last ``LIVE_LATENCY_FRAMES`` frames (a
        status line asks every half second, often from the frame loop itself: percentiles of the
        whole window stalled it 2 ms once it held 100,000); once closed, of the whole window
        (``LATENCY_WINDOW`` frames). ``latency_frames`` says how many frames they cover."""
        if self._final is not None:
            return self._final
        return self._snapshot(LIVE_LATENCY_FRAMES)

    def _snapshot(self, recent: int | None = None) -> PipelineStats:
        m = self._meter
        with m.lock:
            frames = m.frames
            lat = m.latencies.last(recent)
            sums = dict(m.sums)
            keyframes = m.keyframes
        seconds = (m.end or time.perf_counter()) - m.start
        p50, p99 = (float(v) for v in np.percentile(lat, [50, 99])) if lat.size else (math.nan, math.nan)
        sink_stats = {label: s.stats for label, s in zip(sink_labels(self.sinks), self.sinks, strict=True)}
        sched = self.segmenter.scheduler.stats
        return PipelineStats(
            frames=frames,
            keyframes=keyframes,
            seconds=seconds,
            fps=frames / seconds if seconds > 0 else 0.0,
            latency_p50_ms=p50,
            latency_p99_ms=p99,
            source_dropped=self.source.stats.dropped,
            sink_dropped=sum(s.dropped for s in sink_stats.values()),
            reconnects=self.source.stats.reconnects,
            stage_ms={k: v / max(frames, 1) for k, v in sums.items()},
            sinks=sink_stats,
            worker_deep_ms=sched.worker_deep_ms / max(frames, 1),
            latency_frames=int(lat.size),
        )

    def _close_outputs(self) -> None:
        """Close every sink and the source even when one raises (a user's Sink or Source class):
        stopping at the first left the rest open, a video unfinalised. The first error is raised."""
        first: BaseException | None = None
        for close in [*(s.close for s in self.sinks), self.source.close]:
            try:
                close()
            except BaseException as exc:
                if first is None:
                    first = exc
                else:
                    log.error("closing %r also failed: %s", close.__self__, exc)
        if first is not None:
            raise first

    @property
    def closed(self) -> bool:
        """True from the moment ``close`` begins (at the end of iteration, too)."""
        return self._closed

    def close(self) -> PipelineStats:
        """Flush and close the sinks, close the source; returns the final statistics. From
        another thread while the loop runs it ends the run, as ``stop()`` does, but at once: the
        frame in hand is not written, and the loop ends without an error. A close() while another
        thread closes (the loop's own end, say) waits for it: when it returns the outputs are
        closed (a video finalised). One on the closing thread itself (a sink's close calling it)
        or on a sink's thread (its emit or release, which that close waits for) returns at once,
        with the statistics so far. So does one from a signal handler that interrupted the loop
        while it read, segmented or wrote a frame: it ends the run as from another thread, and
        the loop closes the outputs as it unwinds."""
        me = threading.current_thread()
        with self._close_lock:  # the loop's end and another thread's close() may meet here
            self._closed = True
            # A signal handler on the loop's thread, inside a step that holds a sink's lock (a
            # blocked write) or the source's: closing them here waited for that lock, forever.
            interrupting = me is self._runner and self._stepping
            first = self._closer is None and not interrupting
            if first:
                self._closer = me
        if interrupting:
            self._stop.set()
            self.source._interrupt()  # a --realtime or --rate wait
            for sink in self.sinks:
                sink._interrupt()  # a write blocked for room gives up, as for another thread's close
        if not first:
            if (
                self._closer is not me
                and not interrupting
                and not any(s._on_own_thread() for s in self.sinks)
            ):
                self._close_done.wait()
            return self.stats
        self._stop.set()
        self._finalizer.detach()
        try:
            self._close_outputs()
        finally:
            self._final = self._snapshot()
            self.segmenter.release(self)  # the next pipeline may run on it
            self._close_done.set()
        return self._final

    def _close_after(self, failure: BaseException | None) -> None:
        """Close; while ``failure`` is on its way (a callback's error, a source's, Ctrl-C), a
        close that fails too is logged, not raised in its place: the caller gets what ended the
        run, not a sink's closing error with it hidden as ``__context__``."""
        if failure is None:
            self.close()
            return
        try:
            self.close()
        except Exception as exc:
            log.error("closing the pipeline's outputs also failed: %s", exc)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._close_after(exc)
