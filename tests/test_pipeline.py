from __future__ import annotations

import functools
import gc
import os
import re
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rtseg import Pipeline, Segmenter
from rtseg.engine import load
from rtseg.errors import ConfigError, InputTypeError, SinkError
from rtseg.models import get_model
from rtseg.overlay import OverlayStyle
from rtseg.pipeline import PipelineStats
from rtseg.schedule import make_scheduler
from rtseg.sink import open_sink
from rtseg.sink.base import Sink
from rtseg.sink.packet import Packet
from rtseg.source import open_source

SOURCE = "synthetic://drive?size=128x96&fps=30&seed=4&frames=8"


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return load(get_model("espnet"), input_size=(64, 48), backend="torch")


def _count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    return n


def test_run_writes_every_frame_and_accounts_costs(engine, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    seen = []
    pipeline = Pipeline(
        SOURCE,
        Segmenter(engine=engine, scheduler="clockwork"),
        sinks=[str(out)],
        on_result=lambda f, r: seen.append((f.index, r.frame_index)),
    )
    assert pipeline.policy == "block"
    stats = pipeline.run()
    assert stats.frames == 8 and seen == [(i, i) for i in range(8)]
    assert stats.keyframe_ratio == 0.25  # clockwork default interval 4
    assert _count(out) == 8
    for stage in ("capture", "preprocess", "low", "deep", "head", "overlay", "handoff"):
        assert stage in stats.stage_ms, stage
    assert stats.sinks[str(out)].written == 8 and stats.sink_dropped == 0
    assert pipeline.source.closed
    text = stats.format_costs()
    assert "outside the engine" in text and "% of engine time" in text
    assert "8 frames" in stats.summary() and "FPS" in stats.status_line()


def test_iterator_stop_and_max_frames(engine) -> None:
    seg = Segmenter(engine=engine)
    with Pipeline(SOURCE, seg, max_frames=3) as p:
        assert [f.index for f, _ in p] == [0, 1, 2]
    p = Pipeline(SOURCE, seg)
    got = []
    for frame, result in p:
        got.append(frame.index)
        assert result.labels.shape == (48, 64)
        if frame.index == 4:
            p.stop()
    assert got == [0, 1, 2, 3, 4] and p.source.closed


def test_live_sources_make_sinks_drop(engine) -> None:
    source = open_source("synthetic://drive?size=64x48&frames=3", realtime=True)
    p = Pipeline(source, Segmenter(engine=engine), sinks=["null://"])
    assert p.policy == "drop" and p.sinks[0].policy == "drop"
    p.run()


class _Held(Sink):
    """A sink whose first emit waits for the test: the frames written meanwhile find its queue (of
    one) full, and all but the newest are dropped."""

    def __init__(self, uri: str, gate: threading.Event) -> None:
        super().__init__(uri, queue_size=1, policy="drop")
        self.gate = gate

    def emit(self, packet) -> None:
        self.gate.wait(30)


def test_dropped_frames_are_totalled_from_the_source_and_every_sink(engine) -> None:
    release = threading.Event()
    sinks = [_Held("held://a", release), _Held("held://b", release)]
    seen = []

    def on_result(frame, result) -> None:
        seen.append(frame.index)
        if len(seen) == 1:
            time.sleep(0.3)  # the realtime source, at 100 FPS, is 30 frames behind: it skips them
        if len(seen) == 5:  # each sink took one frame and holds one: 3 of the 5 were dropped
            release.set()

    source = open_source("synthetic://drive?size=64x48&fps=100&frames=100000", realtime=True)
    pipeline = Pipeline(source, Segmenter(engine=engine), sinks=sinks, on_result=on_result, max_frames=6)
    stats = pipeline.run()
    assert stats.frames == 6
    assert stats.source_dropped == source.stats.dropped >= 20
    assert stats.source_dropped == seen[-1] - (len(seen) - 1)  # the indices skipped
    assert {uri: s.dropped >= 3 for uri, s in stats.sinks.items()} == {"held://a": True, "held://b": True}
    assert stats.sink_dropped == sum(s.dropped for s in stats.sinks.values())
    assert all(s.errors == 0 and s.written + s.dropped == 6 for s in stats.sinks.values())


def test_a_sink_can_ask_to_stop(engine) -> None:
    class StopAfterTwo(Sink):
        def emit(self, packet) -> None:
            if packet.frame.index >= 1:
                self.request_stop()

    sink = StopAfterTwo("stop://", policy="block")
    stats = Pipeline("synthetic://drive?size=64x48&frames=50", Segmenter(engine=engine), sinks=[sink]).run()
    assert stats.frames < 50


def test_bad_sink_closes_the_source(engine) -> None:
    source = open_source(SOURCE)
    with pytest.raises(SinkError):
        Pipeline(source, Segmenter(engine=engine), sinks=["out.gif"])
    assert source.closed


def test_scheduler_override_and_segmenter_stays_open(engine) -> None:
    seg = Segmenter(engine=engine)
    stats = Pipeline(SOURCE, seg, scheduler="clockwork").run()
    assert stats.keyframes == 2
    assert seg(np.zeros((48, 64, 3), np.uint8)).labels.shape == (48, 64)  # still usable


def test_a_rate_limited_source_is_written_at_the_rate_it_delivers(engine, tmp_path: Path) -> None:
    """rate=10 keeps every third frame of a 30 FPS source: a video at 30 FPS played 3x too fast."""
    out = tmp_path / "thin.avi"
    stats = Pipeline(
        "synthetic://drive?size=64x48&fps=30&frames=9",
        Segmenter(engine=engine),
        sinks=[str(out)],
        source_options={"rate": 10},
    ).run()
    cap = cv2.VideoCapture(str(out))
    assert stats.frames == 3 and _count(out) == 3 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10)


def test_a_pipeline_runs_once_from_one_thread(engine) -> None:
    """A second loop over a finished Pipeline got nothing, silently; a second thread iterating it
    read the same source concurrently and failed with 'write after close'."""
    p = Pipeline(SOURCE, Segmenter(engine=engine), sinks=["null://"])
    running = iter(p)
    with pytest.raises(ConfigError, match="already running"):
        iter(p)
    assert len(list(running)) == 8
    with pytest.raises(ConfigError, match="has ended"):
        p.run()


def test_a_new_pipeline_does_not_answer_from_the_last_streams_features(engine) -> None:
    seg = Segmenter(engine=engine, scheduler="clockwork")
    first = [r for _, r in Pipeline(SOURCE, seg, max_frames=6)]
    assert not first[-1].is_keyframe  # the cache holds frame 4 of the first stream
    _, result = next(iter(Pipeline("synthetic://drive?size=128x96&seed=9&frames=2", seg)))
    assert result.is_keyframe and result.deep_age == 0


OTHER = "synthetic://drive?size=128x96&fps=30&seed=9&frames=8"


def _labels(pipeline: Pipeline) -> list[tuple[bool, bytes]]:
    return [(r.is_keyframe, r.labels.tobytes()) for _, r in pipeline]


def test_one_segmenter_runs_one_pipeline_at_a_time(engine) -> None:
    """Two pipelines running through one Segmenter fed one schedule two streams: frames of one
    answered from the other's deep features, keyframes irregular, each run's reset() resetting
    the other; the second to start is refused (and closed), the first runs as if alone."""
    alone = _labels(Pipeline(SOURCE, Segmenter(engine=engine, scheduler="clockwork")))
    seg = Segmenter(engine=engine, scheduler="clockwork")
    first = Pipeline(SOURCE, seg)
    running = iter(first)
    got = [next(running)]
    second = Pipeline(OTHER, seg, sinks=[_Recorder("rec://")])
    with pytest.raises(
        ConfigError, match=r"already segmenting another running Pipeline's stream.*engine=seg\.engine"
    ):
        iter(second)
    assert second.closed and second.source.closed and second.sinks[0].closed
    with pytest.raises(ConfigError, match="already segmenting"):  # nor swap its scheduler mid-run
        Pipeline(OTHER, seg, scheduler="every")
    got += list(running)
    assert [(r.is_keyframe, r.labels.tobytes()) for _, r in got] == alone


def test_a_segmenter_is_free_again_once_its_pipeline_ends(engine) -> None:
    seg = Segmenter(engine=engine, scheduler="clockwork")
    ended = Pipeline(SOURCE, seg)
    assert len(_labels(ended)) == 8  # ran to its end
    stopped = Pipeline(SOURCE, seg)
    for _ in stopped:
        break  # left early: the loop's end closes it
    closed = Pipeline(SOURCE, seg)
    next(iter(closed))
    closed.close()
    dropped = iter(Pipeline(SOURCE, seg))
    next(dropped)
    del dropped  # dropped unclosed
    gc.collect()
    with Pipeline(SOURCE, seg, scheduler="every", max_frames=2) as last:
        assert [r.is_keyframe for _, r in last] == [True, True]


def test_pipelines_on_segmenters_sharing_one_engine_run_at_once(engine) -> None:
    """The way to run two streams: a Segmenter each, one engine between them."""
    alone = [
        _labels(Pipeline(uri, Segmenter(engine=engine, scheduler="clockwork"))) for uri in (SOURCE, OTHER)
    ]
    first = Segmenter(engine=engine, scheduler="clockwork")
    second = Segmenter(engine=first.engine, scheduler="clockwork")
    pairs = list(zip(Pipeline(SOURCE, first), Pipeline(OTHER, second), strict=True))  # interleaved
    for k in range(2):
        assert [(r.is_keyframe, r.labels.tobytes()) for r in (pair[k][1] for pair in pairs)] == alone[k]


class _BrokenClose(Sink):
    """A user's sink whose close fails (a network share gone, a bug)."""

    def emit(self, packet) -> None:
        pass

    def close(self, timeout: float | None = 30.0):
        super().close(timeout)
        raise OSError("share gone")


def test_a_sink_failing_to_close_does_not_leave_the_others_open(engine, tmp_path: Path) -> None:
    """The first close that raised stopped the rest: the video after it was never finalised and
    the source stayed open."""
    out = tmp_path / "after.mp4"
    pipeline = Pipeline(SOURCE, Segmenter(engine=engine), sinks=[_BrokenClose("broken://"), str(out)])
    with pytest.raises(OSError, match="share gone"):
        pipeline.run()
    assert pipeline.closed and pipeline.source.closed
    assert _count(out) == 8


def test_a_failing_close_does_not_replace_the_error_that_ended_the_run(engine, caplog) -> None:
    """The loop's closing raised the sink's OSError in place of the callback's ValueError, which
    was left only as its __context__; so did leaving a with block on an error."""

    def fail_on_third(frame, result) -> None:
        if frame.index == 2:
            raise ValueError("my controller failed")

    pipeline = Pipeline(
        SOURCE, Segmenter(engine=engine), sinks=[_BrokenClose("broken://")], on_result=fail_on_third
    )
    with pytest.raises(ValueError, match="my controller failed"):
        pipeline.run()
    assert pipeline.closed and pipeline.source.closed
    assert "closing the pipeline's outputs also failed: share gone" in caplog.text
    caplog.clear()
    with (
        pytest.raises(KeyError, match="mine"),
        Pipeline(SOURCE, Segmenter(engine=engine), sinks=[_BrokenClose("b://")]),
    ):
        raise KeyError("mine")
    assert "share gone" in caplog.text


def test_an_error_in_the_callback_still_closes_the_outputs(engine, tmp_path: Path) -> None:
    out = tmp_path / "cut.mp4"

    def fail_on_third(frame, result) -> None:
        if frame.index == 2:
            raise RuntimeError("robot stack failed")

    pipeline = Pipeline(SOURCE, Segmenter(engine=engine), sinks=[str(out)], on_result=fail_on_third)
    with pytest.raises(RuntimeError, match="robot stack failed"):
        pipeline.run()
    assert pipeline.closed and pipeline.source.closed
    assert _count(out) == 3  # frames written before the failure are kept, the file finalised


def _video(path: Path, frames: int = 3) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    return path


class _Recorder(Sink):
    """A user's sink that tells whether it was closed."""

    def emit(self, packet) -> None:
        pass

    @property
    def closed(self) -> bool:
        return self._closed


def test_paths_and_a_single_sink_are_accepted(engine, tmp_path: Path) -> None:
    """A Path source or sink failed with "'PosixPath' object has no attribute 'close'"; a single
    string sink was iterated letter by letter."""
    video = _video(tmp_path / "in.avi")
    stats = Pipeline(video, Segmenter(engine=engine), sinks=[tmp_path / "a.avi"]).run()
    assert stats.frames == 3 and _count(tmp_path / "a.avi") == 3
    p = Pipeline(str(video), Segmenter(engine=engine), sinks=str(tmp_path / "b.avi"))
    assert [s.uri for s in p.sinks] == [str(tmp_path / "b.avi")]
    p.run()
    assert _count(tmp_path / "b.avi") == 3


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        ("source", "source must be a URI \\(str\\), a path \\(os.PathLike\\) or a Source, got int"),
        ("segmenter", "segmenter must be a rtseg.Segmenter, got NoneType"),
        (
            "a sink",
            "sinks: each must be a URI \\(str\\), a path \\(os.PathLike\\) or a Sink, got 1 \\(int\\)",
        ),
        ("sinks", "sinks must be a URI, a path, a Sink or a list of them, got int"),
    ],
)
def test_wrong_argument_types_are_named_and_what_was_given_is_closed(engine, wrong: str, message) -> None:
    """Pipeline(123, seg) raised AttributeError from its cleanup, hiding the real problem."""
    source = 123 if wrong == "source" else open_source(SOURCE)
    segmenter = None if wrong == "segmenter" else Segmenter(engine=engine)
    given = _Recorder("given://")
    sinks = 5 if wrong == "sinks" else [given, 1] if wrong == "a sink" else [given]
    with pytest.raises(InputTypeError, match=message):
        Pipeline(source, segmenter, sinks=sinks)
    assert wrong == "source" or source.closed
    assert wrong == "sinks" or given.closed


@pytest.mark.parametrize("limit", [-1, 0, 2.5, True, float("nan"), "3"])
def test_max_frames_is_checked_before_anything_opens(engine, limit, monkeypatch) -> None:
    """-1 ran no frame silently, 2.5 ran 3, True ran 1, NaN had no limit, "3" raised TypeError
    mid-iteration once the source was open."""
    opened = []
    monkeypatch.setattr("rtseg.pipeline.open_source", lambda *a, **k: opened.append(a))
    message = rf"max_frames must be None \(no limit\) or a whole number >= 1, got {limit!r} \("
    with pytest.raises(ConfigError, match=message):
        Pipeline(SOURCE, Segmenter(engine=engine), max_frames=limit)
    assert opened == []
    given = _Recorder("given://")
    with pytest.raises(ConfigError, match="max_frames"):
        Pipeline(open_source(SOURCE), Segmenter(engine=engine), sinks=[given], max_frames=limit)
    assert given.closed


def test_on_result_must_be_callable(engine, monkeypatch) -> None:
    """on_result="print" failed at frame 0, after it was segmented and written."""
    monkeypatch.setattr("rtseg.pipeline.open_source", lambda *a, **k: pytest.fail("opened"))
    with pytest.raises(InputTypeError, match=r"on_result must be None or a callable .*got 'print' \(str\)"):
        Pipeline(SOURCE, Segmenter(engine=engine), on_result="print")
    monkeypatch.undo()
    assert [f.index for f, _ in Pipeline(SOURCE, Segmenter(engine=engine), max_frames=np.int64(2))] == [0, 1]


async def _async_callback(frame, result) -> None:
    pass


async def _async_generator_callback(frame, result):
    yield frame


class _AsyncCallable:
    async def __call__(self, frame, result) -> None:
        pass


@pytest.mark.parametrize(
    "callback",
    [
        _async_callback,
        functools.partial(_async_callback),
        _AsyncCallable(),
        _async_generator_callback,
    ],
    ids=["async-def", "partial", "async-call", "async-generator"],
)
def test_an_async_on_result_is_refused(engine, callback, monkeypatch) -> None:
    """An async def on_result was accepted and never ran: each call made a coroutine nobody awaited."""
    monkeypatch.setattr("rtseg.pipeline.open_source", lambda *a, **k: pytest.fail("opened"))
    with pytest.raises(InputTypeError, match=r"on_result must be a plain callable, .*called synchronously"):
        Pipeline(SOURCE, Segmenter(engine=engine), on_result=callback)


def test_a_callable_object_and_a_class_are_accepted_as_on_result(engine) -> None:
    class Counter:
        def __init__(self) -> None:
            self.frames = 0

        def __call__(self, frame, result) -> None:
            self.frames += 1

    seen = []

    class Record:  # called with (frame, result) as any callable: makes an object
        def __init__(self, frame, result) -> None:
            seen.append(frame.index)

    counter = Counter()
    Pipeline(SOURCE, Segmenter(engine=engine), on_result=counter, max_frames=2).run()
    Pipeline(SOURCE, Segmenter(engine=engine), on_result=Record, max_frames=2).run()
    assert counter.frames == 2 and seen == [0, 1]


@pytest.mark.parametrize("style", ["side-by-side", {"mode": "mask"}])
def test_style_must_be_an_overlay_style(engine, style, monkeypatch) -> None:
    """style="side-by-side" failed at frame 0 on the sinks' threads, after it was read and
    segmented, and without sinks it was ignored silently."""
    monkeypatch.setattr("rtseg.pipeline.open_source", lambda *a, **k: pytest.fail("opened"))
    message = rf"style must be None or a rtseg.overlay.OverlayStyle, got {re.escape(repr(style))} \("
    with pytest.raises(InputTypeError, match=message + r".*OverlayStyle\(mode=\.\.\.\)"):
        Pipeline(SOURCE, Segmenter(engine=engine), style=style)
    monkeypatch.undo()
    given = _Recorder("given://")
    with pytest.raises(InputTypeError, match="style must be"):
        Pipeline(open_source(SOURCE), Segmenter(engine=engine), sinks=[given], style=style)
    assert given.closed
    p = Pipeline(SOURCE, Segmenter(engine=engine), sinks=["null://"], style=OverlayStyle(mode="mask"))
    assert p.run().frames == 8 and p.style.mode == "mask"


def test_source_options_with_an_opened_source_are_refused(engine) -> None:
    """They were ignored silently: the Source was opened with its own options."""
    source = open_source(SOURCE)
    with pytest.raises(ConfigError, match=r"source_options apply when source is a URI.*\['loop'\]"):
        Pipeline(source, Segmenter(engine=engine), source_options={"loop": True})
    assert source.closed


def test_a_run_that_cannot_start_closes_its_outputs(engine, tmp_path: Path, monkeypatch) -> None:
    """reset() failing when the run starts (an async scheduler's deep job that failed) raised
    before the iteration's cleanup: the source stayed open, the sink thread alive, and iterating
    again said "already running"."""
    seg = Segmenter(engine=engine)

    def failing_reset() -> None:
        raise RuntimeError("the deep job in flight failed")

    monkeypatch.setattr(seg.scheduler, "reset", failing_reset)
    p = Pipeline(SOURCE, seg, sinks=[str(tmp_path / "o.avi"), _Recorder("rec://")])
    with pytest.raises(RuntimeError, match="deep job in flight failed"):
        list(p)
    assert p.closed and p.source.closed and p.sinks[1].closed
    assert not any(s._thread.is_alive() for s in p.sinks)
    with pytest.raises(ConfigError, match="has ended"):
        list(p)


def test_a_pipeline_that_cannot_start_leaves_the_segmenters_scheduler(engine, tmp_path: Path) -> None:
    """scheduler= was swapped in before the sinks opened: a sink that could not open left the
    segmenter on the pipeline's scheduler, the user's own closed."""
    mine = make_scheduler("clockwork", interval=3, warp=False)
    seg = Segmenter(engine=engine, scheduler=mine)
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    given = _Recorder("given://")
    with pytest.raises(SinkError, match="a file of that name is in the way"):
        Pipeline(SOURCE, seg, scheduler="every", sinks=[given, str(blocker / "out.mp4")])
    assert given.closed and seg.scheduler is mine
    frame = np.zeros((48, 64, 3), np.uint8)
    assert [seg(frame).is_keyframe for _ in range(4)] == [True, False, False, True]  # still usable
    mine.claim(seg)  # still this segmenter's: no ConfigError


def test_a_scheduler_that_cannot_be_used_closes_what_was_opened(engine, tmp_path: Path, monkeypatch) -> None:
    """Swapped in last, the scheduler's refusal (serving another Segmenter) comes after the sinks
    opened: those opened from URIs are closed with the ones given, and the source."""
    other = Segmenter(engine=engine, scheduler=make_scheduler("clockwork"))
    opened: list[Sink] = []

    def recording_open_sink(uri):
        opened.append(open_sink(uri))
        return opened[-1]

    monkeypatch.setattr("rtseg.pipeline.open_sink", recording_open_sink)
    source = open_source(SOURCE)
    seg = Segmenter(engine=engine)
    with pytest.raises(ConfigError, match="already serves another Segmenter"):
        Pipeline(source, seg, scheduler=other.scheduler, sinks=[str(tmp_path / "o.avi"), _Recorder("rec://")])
    assert source.closed and len(opened) == 1 and not opened[0]._thread.is_alive()
    assert seg.scheduler is not other.scheduler and other.scheduler._owner.holder() is other


def test_an_output_hard_linked_to_the_input_is_refused(engine, tmp_path: Path) -> None:
    """The guard compared resolved paths only: a hard link to the input was overwritten."""
    video = _video(tmp_path / "in.avi")
    (tmp_path / "hard.avi").hardlink_to(video)
    before = video.read_bytes()
    with pytest.raises(SinkError, match=f"hard.avi: would overwrite {video}"):
        Pipeline(video, Segmenter(engine=engine), sinks=[tmp_path / "hard.avi"])
    assert video.read_bytes() == before


def test_two_sinks_writing_one_file_are_refused(engine, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "old.avi").write_bytes(b"old")
    (tmp_path / "link.avi").hardlink_to(tmp_path / "old.avi")
    for pair in (
        ["o.avi", "./o.avi"],
        ["o.avi", "file://o.avi"],
        ["old.avi", "link.avi"],
        ["f/%04d.png"] * 2,
        # Image patterns of other text that name the same files overwrote each other's
        ["f/%d.png", "f/%01d.png"],
        ["f/%06d.png", "f/%06i.png"],
        ["f/%d.png", "e/../f/%03d.png"],  # from frame 100 on
        ["f/%-5d.png", "f/%-5i.png"],
        ["f/a%d.png", "f/a1%d.png"],  # frame 10 of one is frame 0 of the other
    ):
        with pytest.raises(SinkError, match="two sinks cannot write one file"):
            Pipeline(SOURCE, Segmenter(engine=engine), sinks=pair)
    fine = ["f/%04d.png", "g/%04d.png", "o.avi", "f/%04d.jpg", "f/b%d.png", "f/%+d.png"]
    Pipeline(SOURCE, Segmenter(engine=engine), sinks=fine).close()


def test_a_dropped_pipeline_closes_its_outputs(engine, tmp_path: Path) -> None:
    import gc

    p = Pipeline(SOURCE, Segmenter(engine=engine), sinks=[_Recorder("rec://")])
    sink, source = p.sinks[0], p.source
    del p
    gc.collect()
    assert sink.closed and source.closed


_ABANDON = """
import sys
import torch
from rtseg import Pipeline, Segmenter
from rtseg.pipeline import PipelineStats
from rtseg.engine import load
from rtseg.models import get_model

engine = load(get_model("espnet"), input_size=(64, 48), backend="torch")
running = iter(Pipeline(sys.argv[1], Segmenter(engine=engine), sinks=[sys.argv[2]]))
next(running)
next(running)
"""


def test_a_pipeline_still_running_at_exit_finalises_its_video(tmp_path: Path, exits_cleanly) -> None:
    """A script that ended while holding an unfinished pipeline left a 44-byte mp4 without its index."""
    out = tmp_path / "held.mp4"
    exits_cleanly(_ABANDON, SOURCE, str(out))
    assert _count(out) == 2


def test_a_running_pipeline_reports_the_latency_of_its_recent_frames(engine) -> None:
    """The live status line asks for stats every half second from the frame loop: percentiles over
    the whole 100,000-frame window took 2 ms each time; while running, they cover the last 1000."""
    from rtseg.pipeline import LIVE_LATENCY_FRAMES

    pipeline = Pipeline("synthetic://drive?size=64x48&frames=3", Segmenter(engine=engine))
    try:
        with pipeline._meter.lock:  # an hour of frames: slow at first, fast lately
            for ms in [100.0] * 5000 + [10.0] * LIVE_LATENCY_FRAMES:
                pipeline._meter.latencies.add(ms)
        live = pipeline.stats
        assert live.latency_p50_ms == 10.0 and live.latency_p99_ms == 10.0
        assert live.latency_frames == LIVE_LATENCY_FRAMES
    finally:
        final = pipeline.close()
    assert final.latency_p50_ms == 100.0  # the whole window once closed
    assert final.latency_frames == 5000 + LIVE_LATENCY_FRAMES


def test_the_summary_says_which_frames_the_latency_percentiles_cover(engine, monkeypatch) -> None:
    """Latency p50/p99 cover the newest LATENCY_WINDOW frames (100,000), FPS and the rest the whole
    run: a longer run's summary said nothing of it, as if they covered the same frames."""
    whole = Pipeline(SOURCE, Segmenter(engine=engine)).run()
    assert whole.frames == whole.latency_frames == 8 and "over the last" not in whole.summary()
    monkeypatch.setattr("rtseg.pipeline.LATENCY_WINDOW", 5)
    windowed = Pipeline(SOURCE, Segmenter(engine=engine)).run()
    assert windowed.frames == 8 and windowed.latency_frames == 5
    assert "p99 " in windowed.summary() and " ms over the last 5 frames\n" in windowed.summary()


def test_the_recent_frame_rate_counts_the_intervals_between_frames(engine) -> None:
    pipeline = Pipeline("synthetic://drive?size=64x48&frames=3", Segmenter(engine=engine))
    try:
        assert pipeline.recent_fps() == 0.0  # no interval yet
        with pipeline._meter.lock:  # three frames done 0.1 s apart: 10 FPS (not 3 frames / 0.2 s)
            pipeline._meter.done.extend([0.0, 0.1, 0.2])
        assert pipeline.recent_fps() == pytest.approx(10.0)
    finally:
        pipeline.close()


def test_with_sinks_the_frames_handed_out_are_read_only_views(engine, tmp_path: Path) -> None:
    # A sink draws the frame later, on its thread: a mark drawn in the callback showed in every
    # recorded frame, or in none after a 20 ms pause. Now drawing on it is refused at once.
    sent = []

    class Keeper(Sink):
        def emit(self, packet) -> None:
            sent.append(packet)

    marked = []

    def draw(frame, result) -> None:
        with pytest.raises(ValueError, match="read-only"):
            frame.image[0, 0] = 255
        with pytest.raises(ValueError, match="read-only"):
            result.labels[0, 0] = 1
        marked.append(frame.image.copy())  # a copy is the user's to draw on

    seg = Segmenter(engine=engine)
    with Pipeline(SOURCE, seg, sinks=[Keeper("keep://")], on_result=draw, max_frames=3) as p:
        yielded = [frame.image for frame, _ in p]
    assert len(marked) == 3 and all(not image.flags.writeable for image in yielded)
    assert all(np.shares_memory(a.frame.image, b) for a, b in zip(sent, yielded, strict=True))  # no copy
    # Without sinks nothing draws later: the frame stays the user's to change.
    with Pipeline(SOURCE, Segmenter(engine=engine), max_frames=1) as p:
        frame, result = next(iter(p))
        assert frame.image.flags.writeable and result.labels.flags.writeable


def test_close_from_another_thread_ends_the_run_without_an_error(engine, tmp_path: Path) -> None:
    # A watchdog or shutdown thread closing the pipeline: the loop raised "the source is closed"
    # or "write after close" out of the iteration.
    out = tmp_path / "out.avi"
    source = "synthetic://drive?size=128x96&fps=30&seed=4&frames=100000"
    pipeline = Pipeline(source, Segmenter(engine=engine), sinks=[str(out)])
    seen = 0
    closer = threading.Timer(0.2, pipeline.close)
    for _ in pipeline:
        seen += 1
        if seen == 3:  # started from the loop: on a busy machine a timer started before it fired first
            closer.start()
    closer.join()
    stats = pipeline.close()
    assert seen > 0 and pipeline.source.closed and stats.frames >= seen
    assert _count(out) == stats.sinks[str(out)].written > 0


def test_the_cost_breakdown_names_the_schedulers_own_share() -> None:
    """--stats said 'outside the engine' for capture, preprocess, overlay and hand-off, and the
    change score and warp (13 ms at 1024x512) were in no total: they get their own line."""
    stats = PipelineStats(
        frames=10,
        keyframes=2,
        seconds=1.0,
        fps=10.0,
        latency_p50_ms=1.0,
        latency_p99_ms=2.0,
        source_dropped=0,
        sink_dropped=0,
        reconnects=0,
        stage_ms={"capture": 1.0, "low": 10.0, "deep": 20.0, "head": 10.0, "change": 3.0, "warp": 5.0},
    )
    assert stats.scheduler_ms == 8.0 and stats.engine_ms == 40.0
    text = stats.format_costs()
    assert "the scheduler (change score, flow warp) on the inference thread 8.00 ms = 20.0 %" in text
    every = replace(stats, stage_ms={"capture": 1.0, "low": 10.0, "deep": 20.0, "head": 10.0})
    assert "the scheduler" not in every.format_costs()


def test_stop_from_a_signal_handler_ends_a_realtime_wait_at_once(engine) -> None:
    """`rtseg run`'s SIGTERM handler calls stop(): the source slept out its wait for the next frame
    (1/fps = 5 s here, up to 10 s measured) and one more frame was segmented and written."""
    source = open_source("synthetic://drive?size=64x48&fps=0.2", realtime=True)
    pipeline = Pipeline(source, Segmenter(engine=engine), sinks=["null://"])
    previous = signal.signal(signal.SIGUSR1, lambda *_: pipeline.stop())

    def signal_once_waiting() -> None:  # the main thread's second read holds the source's lock
        deadline = time.monotonic() + 10
        while not (source.stats.delivered == 1 and source._reading.locked()) and time.monotonic() < deadline:
            time.sleep(0.001)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGUSR1)

    sent: list[float] = []
    sender = threading.Thread(target=signal_once_waiting)
    try:
        sender.start()
        stats = pipeline.run()
        ended = time.monotonic()
        sender.join(10)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert stats.frames == 1 and ended - sent[0] < 2


def test_a_recording_of_a_source_that_drops_frames_lasts_as_long_as_the_run(engine, tmp_path: Path) -> None:
    """A realtime 25 fps source behind a 10 fps consumer: the frames it dropped were missing from a
    video written at 25 fps, which played the run in less than half its time."""
    out = tmp_path / "rt.avi"
    seen = []

    def slow(frame, result) -> None:
        seen.append(frame.monotonic)
        time.sleep(0.1)

    seg = Segmenter(engine=engine)
    seg(np.zeros((48, 64, 3), np.uint8))  # warmed up: a slow first frame would make all the rest late
    source = open_source("synthetic://drive?size=64x48&fps=25&frames=25", realtime=True)
    stats = Pipeline(source, seg, sinks=[str(out)], on_result=slow).run()
    assert stats.source_dropped > 0 and stats.sinks[str(out)].written == len(seen) < 25
    # frame k of the video shows what was captured by k/25 s: as many frames as the run took
    assert _count(out) == round((seen[-1] - seen[0]) * 25) + 1 > len(seen)
    assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FPS) == pytest.approx(25)


class _Slow(Sink):
    """A user's sink slower than the model, made without a policy."""

    def emit(self, packet) -> None:
        time.sleep(0.02)


def test_opened_sinks_follow_the_source_unless_their_maker_chose(engine, tmp_path: Path) -> None:
    """A Sink given opened kept its own policy (a subclass's "drop", open_sink's "block", 30 FPS,
    untimed): behind a file a user's sink lost frames (11 of 30 written), and behind a realtime
    source an opened video was neither timed nor at the source's rate, unlike the same URI."""
    seg = Segmenter(engine=engine)
    slow, chosen = _Slow("slow://", queue_size=1), _Slow("chosen://", queue_size=1, policy="drop")
    with open_sink(tmp_path / "alone.avi") as alone:  # used alone: a file blocks, the others drop
        assert slow.policy == "drop" and alone.policy == "block" and (alone.fps, alone.timed) == (30, False)
    stats = Pipeline("synthetic://drive?size=64x48&frames=12", seg, sinks=[slow, chosen]).run()
    assert slow.policy == "block" and stats.sinks["slow://"].written == 12
    assert chosen.policy == "drop"  # the maker's choice is kept

    source = open_source("synthetic://drive?size=64x48&fps=10&frames=3", realtime=True)
    video, fixed = open_sink(tmp_path / "rt.avi"), open_sink(tmp_path / "fixed.avi", fps=25, timed=False)
    Pipeline(source, seg, sinks=[video, fixed]).run()
    assert (video.policy, video.fps, video.timed) == ("drop", 10, True)
    assert (fixed.policy, fixed.fps, fixed.timed) == ("drop", 25, False)
    assert cv2.VideoCapture(str(tmp_path / "rt.avi")).get(cv2.CAP_PROP_FPS) == pytest.approx(10)


class _Failing(Sink):
    def emit(self, packet) -> None:
        raise OSError("disk gone")


def test_sinks_sharing_a_uri_each_have_their_statistics(engine) -> None:
    """Keyed by URI, two sinks labelled "ros://cam" were one entry: the failing one's errors
    vanished from the summary (and from rtseg run's --json and exit status)."""
    sinks = [_Failing("ros://cam"), _Recorder("ros://cam"), _Recorder("ros://cam #2"), "null://"]
    stats = Pipeline(SOURCE, Segmenter(engine=engine), sinks=sinks).run()
    assert list(stats.sinks) == ["ros://cam", "ros://cam #3", "ros://cam #2", "null://"]
    assert stats.sinks["ros://cam"].errors == 8 and stats.sinks["ros://cam #3"].written == 8
    assert "sink ros://cam: 0 written, 0 dropped, 8 errors (last: OSError: disk gone)" in stats.summary()


class _SlowRelease(Sink):
    """A sink whose release (an .mp4's index, an upload's last part) waits for the test."""

    def __init__(self, uri: str, go: threading.Event) -> None:
        super().__init__(uri, policy="block")
        self.go, self.releasing, self.released = go, threading.Event(), threading.Event()

    def emit(self, packet) -> None:
        pass

    def release(self) -> None:
        self.releasing.set()
        assert self.go.wait(30)
        self.released.set()


def test_a_second_close_from_another_thread_waits_for_the_first(engine) -> None:
    """The run's own end was closing the outputs when the main thread's close() returned at once,
    with live statistics: the video it went on to read had no index yet."""
    go = threading.Event()
    sink = _SlowRelease("slow://", go)
    pipeline = Pipeline(SOURCE, Segmenter(engine=engine), sinks=[sink])

    class Announced:  # the close_done event, saying when the second close() starts waiting on it
        def __init__(self, event: threading.Event) -> None:
            self.event = event

        def set(self) -> None:
            self.event.set()

        def wait(self, timeout: float | None = None) -> bool:
            go.set()
            return self.event.wait(timeout)

    pipeline._close_done = Announced(getattr(pipeline, "_close_done", threading.Event()))
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    try:
        assert sink.releasing.wait(30)  # the run has ended and is closing its outputs
        stats = pipeline.close()
        released = sink.released.is_set()
        go.set()  # without the wait, the release is let go only here
    finally:
        go.set()
        runner.join(30)
    assert released, "close() returned while the run's own close was still releasing the sink"
    assert stats is pipeline.stats and stats.sinks["slow://"].written == stats.frames == 8


def test_a_close_from_a_sink_while_the_pipeline_closes_returns_at_once(engine) -> None:
    """A sink's release (on its thread, which the closing pipeline waits for) or its close (on the
    closing thread) calling the pipeline's close() must not wait for that close to finish."""
    seen: dict[str, PipelineStats] = {}

    class Closing(Sink):
        def emit(self, packet) -> None:
            pass

        def release(self) -> None:
            seen["release"] = pipeline.close()

        def close(self, timeout: float | None = 30.0):
            stats = super().close(timeout)
            seen["close"] = pipeline.close()
            return stats

    pipeline = Pipeline(SOURCE, Segmenter(engine=engine), sinks=[Closing("closing://")])
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    runner.join(20)
    assert not runner.is_alive(), "the pipeline's close waited for a close() it was running itself"
    assert set(seen) == {"release", "close"} and pipeline.stats.frames == 8


def test_close_from_a_signal_handler_during_a_blocked_write_ends_the_run(
    engine, monkeypatch, outcome_in_thread
) -> None:
    """A SIGTERM handler that closes the pipeline while its thread waits in a sink's write for room
    (behind a file, a slow output): close() waited for the lock that write held, forever. The
    run ends as after another thread's close: the frame in hand is not written, the rest is."""
    gate, emitting = threading.Event(), threading.Event()

    class Gated(Sink):
        def emit(self, packet) -> None:
            emitting.set()
            assert gate.wait(30)

        def close(self, timeout: float | None = 30.0):
            gate.set()
            return super().close(timeout)

    sink = Gated("gated://", queue_size=1, policy="block")
    pipeline = Pipeline(
        "synthetic://drive?size=64x48&frames=100000", Segmenter(engine=engine), sinks=[sink], max_frames=50
    )
    handled: list[PipelineStats] = []
    put = sink._queue.put

    def interrupted(item, block: bool = True, timeout: float | None = None) -> None:
        # frame 0 is being emitted and frame 1 fills the queue: frame 2's write waits for room
        if isinstance(item, Packet) and emitting.is_set() and sink._queue.full() and not handled:
            handled.append(pipeline.close())  # as if a signal arrived here and its handler closed
        put(item, block, timeout)

    monkeypatch.setattr(sink._queue, "put", interrupted)
    outcome = outcome_in_thread(pipeline.run, 20, "the pipeline's close() and its blocked write deadlocked")
    assert len(outcome) == 1 and isinstance(outcome[0], PipelineStats), outcome
    stats = outcome[0]
    assert handled[0].frames == 2 and pipeline.closed and pipeline.source.closed
    assert stats.frames == stats.sinks["gated://"].written == 2


def test_close_from_a_signal_handler_while_the_loop_counts_a_frame(engine, outcome_in_thread) -> None:
    """The handler's close() took the statistics, whose lock the interrupted loop held while it
    counted the frame: it waited for itself, forever."""
    pipeline = Pipeline(SOURCE, Segmenter(engine=engine), sinks=["null://"])
    latencies = pipeline._meter.latencies
    handled: list[PipelineStats] = []

    class Interrupting:  # the meter's latency window, added to under the meter's lock
        def add(self, ms: float) -> None:
            latencies.add(ms)
            if not handled:
                handled.append(pipeline.close())  # as if a signal arrived here

        def __getattr__(self, name: str):
            return getattr(latencies, name)

    pipeline._meter.latencies = Interrupting()
    outcome = outcome_in_thread(
        lambda: list(pipeline), 20, "close() waited for the statistics' lock its own thread held"
    )
    assert outcome == [[]] and handled[0].frames == 1  # the frame counted, not handed out
    assert pipeline.closed and pipeline.source.closed and pipeline.stats.sinks["null://"].written == 1


def test_a_sink_whose_thread_ends_does_not_hang_the_run(engine) -> None:
    """sys.exit() in a user's Sink ended its thread: behind a file the run then waited forever in
    write for room in its queue. Its frames are counted as errors, as for a failing emit, and the
    other sinks get every frame."""

    class Exiting(Sink):
        def emit(self, packet) -> None:
            raise SystemExit("sink sys.exit")

    pipeline = Pipeline(SOURCE, Segmenter(engine=engine), sinks=[Exiting("bad://"), "null://"])
    outcome: list[object] = []
    runner = threading.Thread(target=lambda: outcome.append(pipeline.run()), daemon=True)
    runner.start()
    runner.join(20)
    assert not runner.is_alive(), "the run waited for room in a sink's queue that nothing empties"
    stats = outcome[0]
    bad = stats.sinks["bad://"]
    assert (stats.frames, bad.written, bad.errors, stats.sinks["null://"].written) == (8, 0, 8, 8)
    assert bad.last_error == "SystemExit: sink sys.exit"
