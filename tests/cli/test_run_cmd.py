"""`rtseg run` end to end on a synthetic source with a small random-init checkpoint."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rtseg.cli import main, run_cmd
from rtseg.errors import SourceError
from rtseg.models import DEFAULT_WEIGHTS, get_model, save_checkpoint

SOURCE = "synthetic://drive?size=160x96&fps=30&seed=1&frames=6"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = get_model("espnet", num_classes=11)
    path = tmp_path_factory.mktemp("w") / "espnet_small.pt"
    save_checkpoint(path, model.state_dict(), model.meta)
    return path


def _frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    return n


def _args(weights: Path) -> list[str]:
    return ["--weights", str(weights), "--size", "64x48", "--backend", "torch"]


def test_file_output_stats_and_json(weights: Path, tmp_path: Path, capsys) -> None:
    out, report = tmp_path / "o.mp4", tmp_path / "r.json"
    rc = main(
        [
            "run",
            SOURCE,
            str(out),
            *_args(weights),
            "--scheduler",
            "clockwork",
            "--interval",
            "3",
            "--stats",
            "--hud",
            "--legend",
            "--json",
            str(report),
            "--quiet",
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    text = captured.out
    assert f"wrote {out}" in text and "per-frame cost" in text and "% of engine time" in text
    assert "espnet on torch fp32 cpu" in captured.err
    assert _frames(out) == 6
    data = json.loads(report.read_text())
    assert data["frames"] == 6 and data["keyframe_ratio"] == pytest.approx(2 / 6, abs=1e-3)
    assert data["latency_frames"] == 6 and "over the last" not in text  # the latency of every frame
    assert data["sinks"][str(out)]["written"] == 6
    assert data["sinks"][str(out)]["last_error"] is None and data["sinks"][str(out)]["emit_ms"] > 0
    assert data["sinks"][str(out)]["close_error"] is None
    assert data["worker_deep_ms"] == 0  # no async worker here
    assert data["complete"] is True and data["exit_status"] == 0 and "stopped" not in data
    # What produced the numbers (an int8 run's report read the same as an fp32 one's)
    engine = data["engine"]
    assert engine["model"] == "espnet" and engine["precision"] == "fp32" and engine["device"] == "cpu"
    assert engine["backend"] == "torch" and engine["scheduler"].startswith("clockwork")
    assert engine["input_size"] == [64, 48]


def test_the_report_says_why_a_sink_failed(weights: Path, tmp_path: Path, capsys) -> None:
    # The summary named the error and the run exited 1; the JSON held only a count.
    images = tmp_path / "imgs"
    images.mkdir()
    for i, (w, h) in enumerate([(160, 96), (140, 100), (160, 96)]):
        cv2.imwrite(str(images / f"f{i}.png"), np.full((h, w, 3), 40 * i, np.uint8))
    out, report = tmp_path / "o.mp4", tmp_path / "r.json"
    rc = main(["run", str(images), str(out), *_args(weights), "--json", str(report), "--quiet"])
    assert rc == 1
    sink = json.loads(report.read_text())["sinks"][str(out)]
    assert sink["written"] == 2 and sink["errors"] == 1
    assert "a 140x100 frame in a 160x96 video was skipped" in sink["last_error"]


def test_a_run_whose_output_took_no_frame_is_not_complete(
    weights: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Under `ulimit -f` a video refused every frame and the run exited 1, its report saying
    "complete": true: complete is false whenever the exit status is not 0, which it says."""
    import rtseg.sink.file as file_sink

    monkeypatch.setattr(file_sink, "file_size_limit", lambda folder: 1000)
    out, report = tmp_path / "o.mp4", tmp_path / "r.json"
    rc = main(["run", SOURCE, str(out), *_args(weights), "--json", str(report), "--quiet"])
    assert rc == 1 and f"nothing written to {out}" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["frames"] == 6 and data["sinks"][str(out)]["errors"] == 6
    assert data["complete"] is False and data["exit_status"] == 1 and "stopped" not in data


def test_two_sinks_with_one_uri_are_both_reported(weights: Path, tmp_path: Path, capsys) -> None:
    """Keyed by URI, the second null:// replaced the first in the summary and the JSON."""
    report = tmp_path / "r.json"
    rc = main(["run", SOURCE, "null://", "null://", *_args(weights), "--json", str(report), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "sink null://: 6 written" in text and "sink null:// #2: 6 written" in text
    assert list(json.loads(report.read_text())["sinks"]) == ["null://", "null:// #2"]


def test_a_video_that_fails_its_close_check_is_not_said_to_be_written(
    weights: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Another program filled the disk: the .mp4's index was not written and it does not open, yet
    the run ended with "wrote o.mp4 (6 frames)" and --json said only "written": 6."""
    import rtseg.sink.file as file_sink

    real = file_sink.check_finished

    def index_lost(video: Path, frames: int) -> None:
        video.write_bytes(video.read_bytes()[:1000])  # what a full disk at close leaves: no moov atom
        real(video, frames)

    monkeypatch.setattr(file_sink, "check_finished", index_lost)
    out, report = tmp_path / "o.mp4", tmp_path / "r.json"
    rc = main(["run", SOURCE, str(out), *_args(weights), "--json", str(report), "--quiet"])
    assert rc == 1
    text = capsys.readouterr().out
    assert "wrote" not in text
    assert f"not written whole: {out} (6 frames sent to it; closing failed" in text
    sink = json.loads(report.read_text())["sinks"][str(out)]
    assert "the video was not written whole (it does not open)" in sink["close_error"]
    assert _frames(out) == 0


@pytest.mark.parametrize("scheduler", ["adaptive", "async"])
def test_compare_every_reports_speedup_and_agreement(
    weights: Path, tmp_path: Path, capsys, scheduler
) -> None:
    report = tmp_path / "r.json"
    rc = main(
        [
            "run",
            SOURCE,
            "null://",
            *_args(weights),
            "--scheduler",
            scheduler,
            "--compare-every",
            "--json",
            str(report),
            "--quiet",
        ]
    )
    assert rc == 0
    assert "compared with every" in capsys.readouterr().out
    cmp = json.loads(report.read_text())["compare_every"]
    assert cmp["frames_compared"] == 6 and 0 < cmp["agreement_miou"] <= 100 and cmp["speedup"] > 0


@pytest.mark.parametrize("stderr_terminal", [True], indirect=True, ids=["stderr-a-terminal"])
@pytest.mark.parametrize(("term", "columns"), [("xterm-256color", 80), ("dumb", 40)])
def test_the_status_line_fits_the_terminal(
    weights: Path, stderr_terminal: io.StringIO, monkeypatch: pytest.MonkeyPatch, term: str, columns: int
) -> None:
    """The line was 84-92 characters: on 80 columns each update wrapped and left a stale line
    (1200 rows in a 10-minute run). TERM=dumb has no ESC[K: the line is cleared with spaces."""
    monkeypatch.setenv("TERM", term)
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr(sys, "stderr", stderr_terminal)
    assert main(["run", "synthetic://drive?size=96x64&frames=40", "null://", *_args(weights)]) == 0
    said = stderr_terminal.getvalue()
    updates = [part.split("\n")[0] for part in said.split("\r")[1:]]
    assert updates and all(u.startswith(f"{u.split()[0]} frames") for u in updates), said
    assert all(len(u.removesuffix("\x1b[K")) <= columns - 1 for u in updates), updates
    assert ("\x1b" in said) is (term != "dumb")


def test_ctrl_c_flushes_and_summarises(weights: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from rtseg.segmenter import Segmenter

    original = Segmenter.__call__
    calls = {"n": 0}

    def interrupt_third(self, frame):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, frame)

    monkeypatch.setattr(Segmenter, "__call__", interrupt_third)
    out = tmp_path / "cut.avi"
    rc = main(["run", SOURCE, str(out), *_args(weights), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 130 and "stopped (Ctrl-C)" in captured.err and "2 frames" in captured.out
    assert _frames(out) == 2  # a valid, closed file


def test_a_run_started_with_sigint_ignored_keeps_it_ignored(
    weights: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A script's background job (``rtseg run ... &``) starts with SIGINT ignored, because the
    Ctrl-C typed for the script's foreground command reaches it too; the run installed its own
    handler anyway and stopped on that Ctrl-C (status 130, 2 of 6 frames)."""
    from rtseg.segmenter import Segmenter

    original = Segmenter.__call__
    calls = {"n": 0}

    def ctrl_c_on_the_third(self, frame):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, frame)

    monkeypatch.setattr(Segmenter, "__call__", ctrl_c_on_the_third)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        rc = main(["run", SOURCE, str(tmp_path / "bg.avi"), *_args(weights), "--quiet"])
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert rc == 0 and "6 frames" in capsys.readouterr().out
    assert _frames(tmp_path / "bg.avi") == 6


@pytest.mark.usefixtures("sigint_delivered")
def test_a_second_ctrl_c_while_the_outputs_close_still_gives_a_valid_file(
    weights: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Users press Ctrl-C again while the mp4 is being finalised: that abandoned the close with a
    traceback, and the file had no index (unreadable)."""
    import time

    from rtseg.pipeline import Pipeline
    from rtseg.segmenter import Segmenter
    from rtseg.sink.file import FileSink

    original_call, original_close = Segmenter.__call__, Pipeline._close_outputs
    original_emit = FileSink.emit
    calls = {"n": 0}

    def interrupt_third(self, frame):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C
        return original_call(self, frame)

    def impatient_close(self):
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, as the outputs start to close
        return original_close(self)

    def slow_emit(self, packet):  # frames are still queued when the outputs start to close
        time.sleep(0.2)
        return original_emit(self, packet)

    monkeypatch.setattr(FileSink, "emit", slow_emit)
    monkeypatch.setattr(Segmenter, "__call__", interrupt_third)
    monkeypatch.setattr(Pipeline, "_close_outputs", impatient_close)
    before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "cut.mp4"
    rc = main(["run", SOURCE, str(out), *_args(weights), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 130 and "stopped (Ctrl-C)" in captured.err and "2 frames" in captured.out
    assert "closing the outputs" in captured.err and "Ctrl-C again to abandon them" in captured.err
    assert f"wrote {out} (2 frames)" in captured.out
    assert _frames(out) == 2  # closed, readable
    assert signal.getsignal(signal.SIGINT) == before


@pytest.mark.usefixtures("sigint_delivered")
def test_ctrl_c_while_the_outputs_close_at_the_end_keeps_the_whole_file(
    weights: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """At the source's end the outputs close inside the pipeline's iteration: a Ctrl-C there cut
    the close short and the video was lost."""
    import time

    from rtseg.pipeline import Pipeline
    from rtseg.sink.file import FileSink

    original_close, original_emit = Pipeline._close_outputs, FileSink.emit

    def impatient_close(self):
        os.kill(os.getpid(), signal.SIGINT)
        return original_close(self)

    def slow_emit(self, packet):
        time.sleep(0.05)
        return original_emit(self, packet)

    monkeypatch.setattr(FileSink, "emit", slow_emit)
    monkeypatch.setattr(Pipeline, "_close_outputs", impatient_close)
    out = tmp_path / "whole.mp4"
    rc = main(["run", SOURCE, str(out), *_args(weights), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0 and "closing the outputs" in captured.err, captured.err
    assert f"wrote {out} (6 frames)" in captured.out and _frames(out) == 6


def test_sigterm_stops_after_the_frame_with_a_valid_file(
    weights: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from rtseg.segmenter import Segmenter

    original = Segmenter.__call__
    calls = {"n": 0}

    def terminate_third(self, frame):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as systemd, docker stop or ROS launch do
        return original(self, frame)

    monkeypatch.setattr(Segmenter, "__call__", terminate_third)
    before = signal.getsignal(signal.SIGTERM)
    out, report = tmp_path / "term.mp4", tmp_path / "term.json"
    rc = main(["run", SOURCE, str(out), *_args(weights), "--json", str(report), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0 and "stopped (SIGTERM)" in captured.err and "3 frames" in captured.out
    assert _frames(out) == 3  # the frame being processed is finished and written, the file closed
    data = json.loads(report.read_text())
    assert data["frames"] == 3  # what was done is kept, and not presented as a complete run
    assert data["complete"] is False and data["stopped"] == {"by": "SIGTERM", "phase": "main"}
    assert data["exit_status"] == 0
    assert signal.getsignal(signal.SIGTERM) == before


def test_output_over_the_input_is_refused_before_anything_is_written(
    weights: Path, tmp_path: Path, capsys
) -> None:
    video = tmp_path / "in.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    before = video.read_bytes()
    rc = main(["run", str(video), str(video), *_args(weights), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "would overwrite" in err and str(video) in err
    assert video.read_bytes() == before


def test_a_bad_image_mid_folder_keeps_and_reports_what_was_done(
    weights: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"a{i}.png"), np.full((48, 64, 3), 60 * i, np.uint8))
    (folder / "a2.png").write_bytes(b"\x89PNG not really")
    out, report = tmp_path / "o.avi", tmp_path / "r.json"
    rc = main(["run", f"images://{folder}", str(out), *_args(weights), "--json", str(report), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 2 and "a2.png" in captured.err and "stopped after 2 frames" in captured.err
    assert "2 frames" in captured.out and f"wrote {out} (2 frames)" in captured.out
    data = json.loads(report.read_text())
    assert _frames(out) == 2 and data["frames"] == 2
    assert data["complete"] is False and "a2.png" in data["error"] and data["exit_status"] == 2


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--rate", "0", "argument --rate: expected a finite number > 0, got 0"),
        ("--rate", "inf", "argument --rate: expected a finite number > 0, got inf"),
        ("--alpha", "2", "argument --alpha: expected a number from 0 to 1, got 2"),
        ("--alpha", "nan", "argument --alpha: expected a number from 0 to 1, got nan"),
        (
            "--timeout",
            "0",
            "argument --timeout: expected a number of seconds from 0.001 to 2147483.647 (FFmpeg takes "
            "int32 milliseconds), got 0",
        ),
        ("--reconnect", "-1", "argument --reconnect: expected a whole number >= 0, got -1"),
        (
            "--decode-threads",
            "-1",
            "argument --decode-threads: expected a whole number from 0 (one per core)",
        ),
        ("--decode-threads", "65", "to 64, got 65"),
    ],
)
def test_source_and_overlay_values_are_refused_naming_the_flag(
    flag: str, value: str, message: str, capsys
) -> None:
    """They were SourceOptions' and OverlayStyle's messages: "rate must be None or a positive
    finite number", "OverlayStyle.alpha must be ...", "decode_threads must be ..."."""
    assert main(["run", "rtsp://127.0.0.1:1/x", "null://", flag, value]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value"), [("--rate", "0"), ("--alpha", "2"), ("--frames", "0")])
def test_a_value_out_of_range_leaves_a_report_of_the_refused_run(
    flag: str, value: str, tmp_path: Path, capsys
) -> None:
    """Checked by argparse, whose exit wrote no --json report: a report of an earlier run, saying
    "complete": true, stayed in its place."""
    report = tmp_path / "run.json"
    report.write_text(json.dumps({"complete": True, "frames": 20}))
    assert main(["run", SOURCE, "null://", flag, value, "--json", str(report)]) == 2
    written = json.loads(report.read_text())
    assert written["complete"] is False and written["exit_status"] == 2
    assert written["stopped"] == {"by": "error", "phase": "options"}
    assert f"argument {flag}: expected" in written["error"] and f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1"])
def test_frames_must_be_a_positive_count(value: str, capsys) -> None:
    assert main(["run", SOURCE, "null://", "--frames", value]) == 2
    assert "argument --frames: expected a whole number >= 1" in capsys.readouterr().err


def test_frames_must_be_a_number(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", SOURCE, "null://", "--frames", "x"])
    assert info.value.code == 2 and "argument --frames: invalid int value: 'x'" in capsys.readouterr().err


def test_demo_without_arguments(weights: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_cmd, "DEMO_SOURCE", "synthetic://drive?size=128x72&frames=4")
    rc = main(["run", *_args(weights), "--quiet"])
    assert rc == 0 and "wrote out/demo.mp4" in capsys.readouterr().out
    assert _frames(tmp_path / "out" / "demo.mp4") == 4


def test_bare_rtseg_is_the_demo(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_cmd, "DEMO_SOURCE", "synthetic://drive?size=128x72&frames=2")
    rc = main([])
    if DEFAULT_WEIGHTS.is_file():
        assert rc == 0 and (tmp_path / "out" / "demo.mp4").is_file()
    else:
        assert rc == 2 and "default weights are missing" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "ftp://x/y.mp4", "null://"], "unsupported source scheme"),
        (["run", SOURCE, "out.gif"], "cannot tell the format"),
        (["run", SOURCE, "null://", "--scheduler", "every", "--interval", "3"], "--interval applies"),
        # a bare "change" was left as make_scheduler's keyword
        (
            ["run", SOURCE, "null://", "--scheduler", "every", "--change", "flow"],
            "error: --change flow applies only to the adaptive and async schedulers, not to 'every'",
        ),
        (
            ["run", SOURCE, "null://", "--backend", "onnxruntime", "--calibration", "l.txt"],
            "error: --calibration applies to int8 engines (--precision int8), not --precision fp32",
        ),
        # the flags, not make_scheduler's keywords (flow_stride, max_interval)
        (["run", SOURCE, "null://", "--no-warp", "--flow-stride", "8"], "--flow-stride applies"),
        (["run", SOURCE, "null://", "--scheduler", "adaptive", "--max-interval", "0"], "--max-interval must"),
        (
            ["run", SOURCE, "null://", "--target-keyframe-rate", "2"],
            "--target-keyframe-rate must be in (0, 1], got 2",
        ),
        # spaced prose ("flow stride", "target keyframe rate") named no flag
        (["run", SOURCE, "null://", "--flow-stride", "0"], "--flow-stride must be a whole number >= 1"),
        (
            ["run", SOURCE, "null://", "--threshold", "0.1", "--target-keyframe-rate", "0.5"],
            "give either --threshold or --target-keyframe-rate, not both",
        ),
        # was "(warp=FlowWarp(), --warp)": Python advice to a CLI user
        (
            ["run", SOURCE, "null://", "--no-warp", "--change", "flow"],
            "--change flow (the flow residual) needs the flow warp, which --no-warp turns off: "
            "leave the warp on, or use --change features",
        ),
        (["run", SOURCE, "null://", "--scheduler", "every", "--warp"], "--warp (the flow warp) needs cached"),
        # refused at set-up, once the engine's input size (64x48) is known
        (
            ["run", SOURCE, "null://", "--scheduler", "clockwork", "--flow-stride", "1000"],
            "--flow-stride 1000 leaves a 0x0 flow image at input 64x48, and DIS needs both sides >= 12 "
            "px: the largest --flow-stride here is 4, or turn the warp off (--no-warp)",
        ),
    ],
)
def test_errors_are_one_clean_line(weights: Path, argv: list[str], message: str, capsys) -> None:
    rc = main([*argv, *_args(weights), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "rtseg run: error:" in err and message in err


@pytest.mark.parametrize(
    "options, message",
    [
        (["--size", "64x48", "--flow-stride", "8"], "--flow-stride 8 leaves a 8x6 flow image at input 64x48"),
        # no --size: the shipped weights' size
        (["--flow-stride", "100"], "--flow-stride 100 leaves a 4x3 flow image at input 480x360"),
    ],
)
def test_a_flow_stride_too_large_for_the_input_is_refused_before_the_engine_loads(
    options: list[str], message: str, monkeypatch, capsys
) -> None:
    """Refused only after 'loading the engine' (43 s at 480x360 with auto on a cold cache)."""

    def no_load(*args, **kwargs):
        raise AssertionError("the engine was loaded before --flow-stride was checked")

    monkeypatch.setattr(run_cmd, "load_engine", no_load)
    rc = main(["run", SOURCE, "null://", *options])
    err = capsys.readouterr().err
    assert rc == 2 and f"rtseg run: error: {message}" in err and "loading" not in err


def test_a_missing_source_is_reported_before_the_engine_loads(tmp_path: Path, monkeypatch, capsys) -> None:
    def no_load(*args, **kwargs):
        raise AssertionError("the engine was loaded before the source was checked")

    monkeypatch.setattr(run_cmd, "load_engine", no_load)
    rc = main(["run", str(tmp_path / "missing.mp4"), "null://"])
    err = capsys.readouterr().err
    assert rc == 2 and "rtseg run: error:" in err and "missing.mp4" in err


@pytest.mark.parametrize(
    "sink, message",
    [
        ("zmq://tcp://127.0.0.1:99999", "the port must be in 1..65535"),
        ("out.gif", "cannot tell the format"),
    ],
)
def test_a_bad_sink_is_reported_before_the_engine_loads(sink: str, message: str, monkeypatch, capsys) -> None:
    def no_load(*args, **kwargs):
        raise AssertionError("the engine was loaded before the sinks were checked")

    monkeypatch.setattr(run_cmd, "load_engine", no_load)
    rc = main(["run", SOURCE, sink])
    err = capsys.readouterr().err
    assert rc == 2 and "rtseg run: error:" in err and message in err


def test_the_source_options_reach_the_source(monkeypatch) -> None:
    seen = {}

    def no_open(uri, **options):  # type: ignore[no-untyped-def]
        seen.update(options)
        raise SourceError("stop here")

    monkeypatch.setattr(run_cmd, "open_source", no_open)
    argv = ["run", "rtsp://127.0.0.1:1/x", "null://", "--timeout", "3", "--reconnect", "2"]
    assert main([*argv, "--decode-threads", "4"]) == 2
    assert seen == {
        "loop": False,
        "resize": None,
        "rate": None,
        "realtime": False,
        "timeout": 3.0,
        "reconnect": 2,
        "decode_threads": 4,
    }


@pytest.mark.parametrize(
    "source, flags, message",
    [
        (
            "rtsp://127.0.0.1:1/x",
            ["--loop", "--frames", "20"],
            "--loop applies to files, image folders and synthetic scenes with frames=N (restarted "
            "at their end); rtsp://127.0.0.1:1/x is a live network stream",
        ),
        ("http://127.0.0.1:1/stream.mjpg", ["--realtime"], "--realtime applies to files, image"),
        ("camera://7", ["--decode-threads", "2"], "--decode-threads applies to live network streams"),
        (SOURCE, ["--timeout", "3"], "--timeout applies to cameras and network URLs"),
        (SOURCE, ["--reconnect", "2"], "--reconnect applies to cameras and live streams"),
        (
            SOURCE,
            ["--decode-threads", "0"],
            f"--decode-threads applies to live network streams, rtsp:// and "
            f"http(s):// (FFmpeg's decoder threads); {SOURCE} is a synthetic scene",
        ),
        ("synthetic://drive?size=64x48", ["--loop"], "is an endless synthetic scene (no frames=N)"),
    ],
)
def test_source_flags_that_do_not_apply_are_refused_before_anything_opens(
    source: str, flags: list[str], message: str, monkeypatch, capsys
) -> None:
    """--loop and --realtime on a stream, and the stream flags on a local or synthetic source, were
    accepted and did nothing. Refused, naming the flag, before the source opens."""

    def no_open(*args, **kwargs):
        raise AssertionError("the source was opened before its options were checked")

    monkeypatch.setattr(run_cmd, "open_source", no_open)
    rc = main(["run", source, "null://", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and "rtseg run: error: " in err and message in err


def test_overlay_flags_with_no_output_that_draws_are_warned_about(weights: Path, capsys) -> None:
    """--hud with only null:// did nothing, silently; they apply to the outputs that draw."""
    rc = main(
        ["run", SOURCE, "null://", *_args(weights), "--frames", "1", "--quiet", "--hud", "--alpha", "1"]
    )
    err = capsys.readouterr().err
    assert rc == 0
    assert "rtseg run: warning: --alpha, --hud change only what outputs draw, and no output here draws" in err
    rc = main(["run", SOURCE, "null://?overlay=1", *_args(weights), "--frames", "1", "--quiet", "--hud"])
    assert rc == 0 and "warning" not in capsys.readouterr().err
    rc = main(["run", SOURCE, "null://", *_args(weights), "--frames", "1", "--quiet"])
    assert rc == 0 and "warning" not in capsys.readouterr().err


def test_the_rate_help_says_it_is_media_time_for_files(capsys) -> None:
    """It said "at most this many frames per second": a file at --rate 5 ran at 42 FPS (the rate
    thins media time; --realtime paces by the wall clock)."""
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--rate RATE keep at most this many frames per second of media time for files" in text
    assert "add --realtime to pace them by the wall clock), per second of wall-clock time for cameras" in text


def test_a_model_without_shipped_weights_asks_for_weights_in_the_commands_terms(monkeypatch, capsys) -> None:
    # it gave the Python API's "Segmenter('enet') needs weights=: ... pass rtseg.models.get_model"
    def no_open(*args, **kwargs):
        raise AssertionError("the source was opened before the model options were checked")

    monkeypatch.setattr(run_cmd, "open_source", no_open)
    rc = main(["run", SOURCE, "null://", "--model", "enet"])
    err = capsys.readouterr().err
    assert rc == 2 and "rtseg run: error: --weights is required with --model enet" in err
    assert "Segmenter(" not in err and "rtseg train --model enet" in err


def test_a_looping_folder_is_not_overwritten_by_a_later_pass(weights: Path, tmp_path: Path, capsys) -> None:
    for i in (5, 6):  # the first pass writes 000000-000001; the third would reach 000005.png
        cv2.imwrite(str(tmp_path / f"{i:06d}.png"), np.full((48, 64, 3), 30 * i, np.uint8))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    rc = main(["run", str(tmp_path), str(tmp_path / "%06d.png"), "--loop", "--frames", "8", *_args(weights)])
    err = capsys.readouterr().err
    assert rc == 2 and "would overwrite" in err and "000005.png" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_zmq_sink_says_which_port_it_bound_before_the_first_frame(weights: Path, capsys) -> None:
    rc = main(["run", SOURCE, "zmq://tcp://127.0.0.1:*", *_args(weights), "--frames", "1", "--quiet"])
    err = capsys.readouterr().err
    header = err.splitlines()[0]
    assert rc == 0 and header.startswith(
        f"rtseg run: {SOURCE} -> zmq://tcp://127.0.0.1:* (bound to tcp://127.0.0.1:"
    )


def test_the_json_says_which_frames_the_latency_percentiles_cover(
    weights: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A run longer than the latency window (100,000 frames; 4 here): p50/p99 cover its newest
    frames, FPS and the rest all of them, and the report read as if they covered the same."""
    monkeypatch.setattr("rtseg.pipeline.LATENCY_WINDOW", 4)
    report = tmp_path / "r.json"
    assert main(["run", SOURCE, "null://", *_args(weights), "--json", str(report), "--quiet"]) == 0
    assert re.search(
        r"latency p50 [\d.]+ ms / p99 [\d.]+ ms over the last 4 frames\n", capsys.readouterr().out
    )
    data = json.loads(report.read_text())
    assert data["frames"] == 6 and data["latency_frames"] == 4


def test_a_run_without_frames_writes_strict_json(weights: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """A source that ends at once (a video whose frames do not decode) has no latency or keyframe
    ratio: the report said NaN, which is not JSON."""
    from rtseg.source import open_source

    def empty(uri, **options):
        source = open_source(uri, **options)
        monkeypatch.setattr(source, "_next_frame", lambda: None)
        return source

    monkeypatch.setattr(run_cmd, "open_source", empty)
    report = tmp_path / "r.json"
    rc = main(
        ["run", SOURCE, "null://", *_args(weights), "--compare-every", "--json", str(report), "--quiet"]
    )
    assert rc == 0 and "0 frames" in capsys.readouterr().out

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the JSON report")

    data = json.loads(report.read_text(), parse_constant=refuse)
    assert data["frames"] == 0 and data["keyframe_ratio"] is None and data["latency_p99_ms"] is None
    assert data["compare_every"]["agreement_miou"] is None


@pytest.mark.parametrize(
    "option, message",
    [("--loop", "--loop needs --frames N"), ("--realtime", "runs the source twice")],
)
def test_compare_every_refuses_a_source_it_cannot_replay_before_the_engine_loads(
    option: str, message: str, monkeypatch, capsys
) -> None:
    """With --loop and no --frames the first pass never ended, keeping every frame's labels."""

    def no_load(*args, **kwargs):
        raise AssertionError("the engine was loaded before --compare-every was checked")

    monkeypatch.setattr(run_cmd, "load_engine", no_load)
    rc = main(["run", SOURCE, "null://", "--compare-every", option])
    err = capsys.readouterr().err
    assert rc == 2 and "rtseg run: error:" in err and message in err


@pytest.mark.parametrize(
    "source", ["camera://7", "/dev/video7", "rtsp://127.0.0.1:9/live", "http://127.0.0.1:9/mjpg"]
)
def test_compare_every_refuses_a_live_source_without_opening_it(source: str, monkeypatch, capsys) -> None:
    """It opened the source first: a camera or server that does not answer cost the whole
    --timeout, and the error was the connection's, not that a live source cannot be replayed."""

    def no_open(*args, **kwargs):
        raise AssertionError("the source was opened before --compare-every was checked")

    monkeypatch.setattr(run_cmd, "open_source", no_open)
    rc = main(["run", source, "null://", "--compare-every", "--timeout", "30"])
    err = capsys.readouterr().err
    assert rc == 2 and "rtseg run: error: --compare-every runs the source twice" in err


# A phase made slow enough to signal into: a load that waits before the real one, and says so.
_SLOW_LOAD = """
import sys, time
from rtseg.cli import main, run_cmd

real = run_cmd.load_engine

def slow(*args, **kwargs):
    print("test: slow load", file=sys.stderr, flush=True)
    time.sleep(60)
    return real(*args, **kwargs)

run_cmd.load_engine = slow
raise SystemExit(main(sys.argv[1:]))
"""
# Says when a frame has been segmented and kept: as the next frame starts (a fixed wait for the
# first frame failed on a busy machine, where the first frames took seconds).
_SAYS_A_FRAME_IS_DONE = """
import sys
from rtseg.cli import main
from rtseg.segmenter import Segmenter

real = Segmenter.__call__
calls = []

def call(self, frame):
    calls.append(1)
    if len(calls) == 2:
        print("test: a frame is done", file=sys.stderr, flush=True)
    return real(self, frame)

Segmenter.__call__ = call
raise SystemExit(main(sys.argv[1:]))
"""
_ENDLESS = "synthetic://drive?size=160x96&fps=30&seed=1&frames=100000"


def _signal_when(script: str, argv: list[str], marker: str, sig: signal.Signals, delay: float):
    """Run ``rtseg`` in a subprocess, send ``sig`` ``delay`` s after ``marker`` appears on its
    stderr; (exit status, stdout, stderr). Every wait is bounded: the child is killed at worst."""
    import subprocess
    import sys
    import threading
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", script, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if marker in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(60), f"{marker!r} never appeared on stderr: {''.join(lines)}"
        time.sleep(delay)
        proc.send_signal(sig)
        out = proc.stdout.read() if proc.wait(timeout=30) is not None else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    reader.join(10)
    return proc.returncode, out, "".join(lines)


@pytest.mark.parametrize(
    ("sig", "code", "by"), [(signal.SIGTERM, 0, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")]
)
@pytest.mark.usefixtures("sigint_delivered")
def test_a_signal_while_the_engine_loads_stops_cleanly(
    weights: Path, tmp_path: Path, sig: signal.Signals, code: int, by: str
) -> None:
    """SIGTERM while the engine loaded killed `rtseg run` with no message, the outputs unclosed; a
    stale --json of an earlier run was left as if it were this run's."""
    out, report = tmp_path / "o.mp4", tmp_path / "r.json"
    report.write_text('{"frames": 90, "complete": true}')  # an earlier run's
    rc, _, err = _signal_when(
        _SLOW_LOAD,
        ["run", SOURCE, str(out), *_args(weights), "--json", str(report), "--quiet"],
        "test: slow load",
        sig,
        0.1,
    )
    assert rc == code, err
    assert f"rtseg run: stopped ({by}) while loading the engine: the main pass did not run" in err
    assert "Traceback" not in err
    data = json.loads(report.read_text())
    assert data["complete"] is False and data["stopped"] == {"by": by, "phase": "engine"}
    assert data["exit_status"] == code
    assert data["frames"] == 0 and not out.exists()


@pytest.mark.parametrize(
    ("sig", "code", "by"), [(signal.SIGTERM, 0, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")]
)
@pytest.mark.usefixtures("sigint_delivered")
def test_a_signal_during_the_compare_every_first_pass_keeps_what_it_measured(
    weights: Path, tmp_path: Path, sig: signal.Signals, code: int, by: str
) -> None:
    """SIGTERM in the first pass killed the process; Ctrl-C said only "interrupted". Both threw
    away the frames the pass had measured and wrote no --json."""
    report = tmp_path / "r.json"
    rc, _, err = _signal_when(
        _SAYS_A_FRAME_IS_DONE,
        ["run", _ENDLESS, "null://", *_args(weights), "--compare-every", "--json", str(report), "--quiet"],
        "test: a frame is done",  # only the first pass segments frames: the main one never starts
        sig,
        0.0,
    )
    assert rc == code, err
    match = re.search(
        rf"rtseg run: stopped \({by}\) during the --compare-every first pass: after (\d+) frames "
        r"\(every frame a keyframe: [\d.]+ ms/frame, [\d.]+ FPS\); the main pass did not run",
        err,
    )
    assert match, err
    assert "Traceback" not in err
    data = json.loads(report.read_text())
    assert data["complete"] is False and data["stopped"] == {"by": by, "phase": "compare-every"}
    first = data["compare_every"]
    assert first["complete"] is False and first["every_frames"] == int(match.group(1)) > 0
    assert first["every_ms_per_frame"] > 0


def test_compare_every_refuses_an_endless_synthetic_source_without_frames(monkeypatch, capsys) -> None:
    """synthetic:// without frames=N never ends: the first pass ran (and kept labels) forever."""

    def no_load(*args, **kwargs):
        raise AssertionError("the engine was loaded before --compare-every was checked")

    monkeypatch.setattr(run_cmd, "load_engine", no_load)
    rc = main(["run", "synthetic://drive?size=64x48", "null://", "--compare-every"])
    err = capsys.readouterr().err
    assert rc == 2 and "rtseg run: error:" in err and "endless synthetic source needs --frames N" in err


def _input_video(path: Path) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    return path


def _no_load(*args, **kwargs):
    raise AssertionError("the engine was loaded before the outputs were checked")


@pytest.mark.parametrize(
    "target",
    [
        "the input",
        "a hard link to the input",
        "the video sink",
        "an input image",
        "the weights",
        "the calibration list",
    ],
)
def test_json_over_an_input_or_an_output_is_refused_before_the_engine_loads(
    target: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    """--json in.mp4 replaced the input (or the video just written) by the report, exit 0; so did
    --json naming the --weights checkpoint or the --calibration list."""
    monkeypatch.setattr(run_cmd, "load_engine", _no_load)
    video = _input_video(tmp_path / "in.avi")
    images = tmp_path / "imgs"
    images.mkdir()
    cv2.imwrite(str(images / "000001.png"), np.zeros((48, 64, 3), np.uint8))
    source, sink, report = str(video), "null://", video
    if target == "a hard link to the input":
        report = tmp_path / "hard.json"
        report.hardlink_to(video)
    elif target == "the video sink":
        sink = report = tmp_path / "o.avi"
        sink = str(sink)
    elif target == "an input image":
        source, report = str(images), images / "000001.png"
    inputs = {"the weights": "--weights", "the calibration list": "--calibration"}
    extra = []
    if target in inputs:  # named another way than --json names it: ./ and a folder's ..
        (tmp_path / "in").write_bytes(b"checkpoint or list")
        report = tmp_path / "imgs" / ".." / "in"
        extra = [inputs[target], f"{tmp_path}/./in"]
        if target == "the calibration list":
            extra += ["--precision", "int8"]  # a list for an fp32 engine is refused first
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    rc = main(["run", source, sink, "--json", str(report), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and f"rtseg run: error: --json {report}" in err, err
    assert ("is also written by the sink" if target == "the video sink" else "would overwrite") in err
    if target in inputs:
        assert f"an input ({inputs[target]})" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    ("case", "phase", "message"),
    [
        ("bad sink", "outputs", "cannot tell the format"),
        ("missing source", "source", "no such file or folder"),
        ("missing weights", "engine", "nonexistent.pt"),
        ("bad option", "options", "--interval applies to the clockwork scheduler"),
    ],
)
def test_a_run_that_fails_before_its_main_pass_leaves_no_stale_report(
    case: str, phase: str, message: str, weights: Path, tmp_path: Path, capsys
) -> None:
    """An earlier run's report stayed in place, "complete": true, as if it were this run's."""
    report = tmp_path / "r.json"
    report.write_text('{"frames": 90, "complete": true}')  # an earlier run's
    argv = ["run", SOURCE, "null://", *_args(weights), "--json", str(report), "--quiet"]
    if case == "bad sink":
        argv[2] = str(tmp_path / "o.xyz")
    elif case == "missing source":
        argv[1] = str(tmp_path / "missing.mp4")
    elif case == "missing weights":
        argv[argv.index("--weights") + 1] = str(tmp_path / "nonexistent.pt")
    else:
        argv += ["--scheduler", "every", "--interval", "3"]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "rtseg run: error:" in err and message in err
    data = json.loads(report.read_text())
    assert data["complete"] is False and data["frames"] == 0 and message in data["error"]
    assert data["stopped"] == {"by": "error", "phase": phase} and data["exit_status"] == 2


def test_a_failed_start_does_not_write_its_report_over_a_file_that_is_no_report(
    tmp_path: Path, capsys
) -> None:
    """Before the source and sinks are open, --json may be a file the user keeps: only an earlier
    report is replaced."""
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    rc = main(["run", str(tmp_path / "missing.mp4"), "null://", "--json", str(keep)])
    err = capsys.readouterr().err
    assert rc == 2 and "left as it is: it is not a report of an earlier run" in err
    assert keep.read_text() == "mine"


def test_a_source_failing_in_the_compare_every_first_pass_reports_it(
    weights: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A source error in the first pass printed nothing of what the pass had measured and wrote
    no --json (the README promises both for a source that fails mid-run)."""
    from rtseg.errors import SourceError
    from rtseg.source import open_source

    opened = {"n": 0}

    def failing_second(uri, **options):  # the main pass's source opens first, the first pass's second
        source = open_source(uri, **options)
        opened["n"] += 1
        if opened["n"] == 2:
            real = source._next_frame

            def next_frame():
                if source.stats.delivered == 2:
                    raise SourceError("camera gone")
                return real()

            monkeypatch.setattr(source, "_next_frame", next_frame)
        return source

    monkeypatch.setattr(run_cmd, "open_source", failing_second)
    report = tmp_path / "r.json"
    rc = main(
        ["run", SOURCE, "null://", *_args(weights), "--compare-every", "--json", str(report), "--quiet"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "rtseg run: error: camera gone" in err
    assert re.search(
        r"stopped by an error during the --compare-every first pass: after 2 frames \(every frame a "
        r"keyframe: [\d.]+ ms/frame",
        err,
    ), err
    data = json.loads(report.read_text())
    assert data["complete"] is False and data["error"] == "camera gone"
    assert data["stopped"] == {"by": "error", "phase": "compare-every"}
    assert data["compare_every"]["every_frames"] == 2


def test_home_is_expanded_in_sinks_and_json(weights: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """'~/out.avi' and --json '~/r.json' (quoted: the shell leaves them) were written under ./~/."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    rc = main(["run", SOURCE, "~/out.avi", *_args(weights), "--frames", "1", "--json", "~/r.json", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert _frames(tmp_path / "home" / "out.avi") == 1
    assert json.loads((tmp_path / "home" / "r.json").read_text())["frames"] == 1
    assert not (tmp_path / "~").exists()


def test_options_may_stand_between_the_source_and_the_sinks() -> None:
    """`rtseg run SRC --frames 2 out.mp4` failed: "unrecognized arguments: out.mp4"."""
    from rtseg.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["run", "in.mp4", "--frames", "2", "a.mp4", "--no-warp", "b.avi", "--quiet"])
    assert (args.source, args.sinks, args.frames, args.warp, args.quiet) == (
        "in.mp4",
        ["a.mp4", "b.avi"],
        2,
        False,
        True,
    )
    assert parser.parse_args(["run", "--frames", "2"]).source is None  # the demo, still
    with pytest.raises(SystemExit):  # an unknown option is still refused
        parser.parse_args(["run", "in.mp4", "--bogus", "a.mp4"])


def test_only_files_are_said_to_be_written(weights: Path, capsys) -> None:
    """NULL:// (any case of the scheme) was reported as "wrote NULL://"."""
    rc = main(["run", SOURCE, "NULL://", *_args(weights), "--frames", "1", "--quiet"])
    assert rc == 0 and "wrote" not in capsys.readouterr().out


def test_two_sinks_to_one_file_are_refused_before_the_engine_loads(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(run_cmd, "load_engine", _no_load)
    monkeypatch.chdir(tmp_path)
    rc = main(["run", SOURCE, "o.avi", "./o.avi", "file://o.avi"])
    err = capsys.readouterr().err
    assert rc == 2 and "./o.avi: the same output as o.avi" in err and not (tmp_path / "o.avi").exists()


def test_an_unexpected_failure_mid_run_leaves_no_stale_report(
    weights: Path, tmp_path: Path, monkeypatch
) -> None:
    from rtseg.segmenter import Segmenter

    original = Segmenter.__call__
    calls = {"n": 0}

    def fail_third(self, frame):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("a bug")
        return original(self, frame)

    monkeypatch.setattr(Segmenter, "__call__", fail_third)
    report = tmp_path / "r.json"
    report.write_text('{"frames": 90, "complete": true}')  # an earlier run's
    with pytest.raises(RuntimeError, match="a bug"):
        main(["run", SOURCE, "null://", *_args(weights), "--json", str(report), "--quiet"])
    data = json.loads(report.read_text())
    assert data["complete"] is False and data["frames"] == 2 and data["error"] == "RuntimeError: a bug"
    assert data["exit_status"] == 1  # Python's, for the traceback


def test_device_calibration_and_engine_dir_reach_the_engine(
    weights: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """As eval and export take them: without --device, TensorRT (or any CUDA run) was out of reach."""
    seen: dict = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise run_cmd.ConfigError("recorded")

    monkeypatch.setattr(run_cmd, "load_engine", record)
    calibration = tmp_path / "list.txt"
    # onnxruntime runs int8 (torch does not: that pair is refused before the engine is asked)
    argv = [*_args(weights), "--backend", "onnxruntime", "--device", "cuda:1", "--precision", "int8"]
    argv += ["--calibration", str(calibration)]
    rc = main(["run", SOURCE, "null://", *argv, "--engine-dir", str(tmp_path / "e"), "--quiet"])
    assert rc == 2 and "recorded" in capsys.readouterr().err
    assert seen["device"] == "cuda:1" and seen["calibration"] == calibration
    assert seen["engine_dir"] == tmp_path / "e"
    main(["run", SOURCE, "null://", *_args(weights), "--quiet"])
    assert seen["device"] is None  # the backend's default: cuda for tensorrt, else cpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_tensorrt_without_device_runs_on_cuda(weights: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """It failed with "got device 'cpu'", a device the user never gave; here no GPU is named."""
    tensorrt = types.ModuleType("tensorrt")
    tensorrt.__version__ = "10.3.0"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    argv = ["--weights", str(weights), "--size", "64x48", "--backend", "tensorrt"]
    rc = main(["run", SOURCE, "null://", *argv, "--engine-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs an NVIDIA GPU" in err and "'cpu'" not in err


def test_a_realtime_recording_says_how_many_video_frames_hold_its_frames(
    weights: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Frames a --realtime source dropped are made up for in the video (each frame held until the
    next one's time), and the summary says so: 'N frames' alone did not match the video."""
    import time

    from rtseg.segmenter import Segmenter

    original = Segmenter.__call__

    def slow(self, frame):  # a 10 FPS model behind a 25 fps source: most frames are dropped
        time.sleep(0.1)
        return original(self, frame)

    monkeypatch.setattr(Segmenter, "__call__", slow)
    out = tmp_path / "rt.avi"
    source = "synthetic://drive?size=160x96&fps=25&seed=1&frames=50"
    rc = main(["run", source, str(out), *_args(weights), "--realtime", "--quiet"])
    said = re.search(
        rf"wrote {re.escape(str(out))} \((\d+) frames over (\d+) video frames at 25 FPS\)",
        capsys.readouterr().out,
    )
    assert rc == 0 and said is not None
    assert int(said[1]) < int(said[2]) == _frames(out)


def _documented_json_fields() -> set[str]:
    """The names in docs/pipeline.md's --json table (first column, in backticks)."""
    text = (Path(__file__).parents[2] / "docs" / "pipeline.md").read_text()
    table = text.split("<!-- json-fields:", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])}


def _written_fields(report: dict, prefix: str = "") -> set[str]:
    """The dotted paths of a report's values; an output's URI is URI, as the table writes it."""
    fields = set()
    for key, value in report.items():
        name = "URI" if prefix == "sinks." else key
        if isinstance(value, dict):
            fields |= _written_fields(value, f"{prefix}{name}.")
        else:
            fields.add(prefix + name)
    return fields


def test_the_documented_json_fields_are_those_runs_write(weights: Path, tmp_path: Path, monkeypatch) -> None:
    """The fields of --json were documented nowhere; the table must name each field a run writes,
    and nothing no run writes."""
    reports = [tmp_path / f"{n}.json" for n in range(3)]
    options = [*_args(weights), "--quiet", "--json"]
    # a main pass with --compare-every, an output that draws, the flow warp
    out = str(tmp_path / "o.avi")
    assert (
        main(["run", SOURCE, out, "--scheduler", "clockwork", "--compare-every", *options, str(reports[0])])
        == 0
    )
    # the adaptive change score
    assert main(["run", SOURCE, "null://", "--scheduler", "adaptive", *options, str(reports[1])]) == 0

    def refused(*args, **kwargs):
        raise run_cmd.ConfigError("refused")

    # an error after the --compare-every first pass, before the main pass
    monkeypatch.setattr(run_cmd, "Pipeline", refused)
    assert main(["run", SOURCE, "null://", "--compare-every", *options, str(reports[2])]) == 2
    written = set().union(*(_written_fields(json.loads(r.read_text())) for r in reports))
    documented = _documented_json_fields()
    assert written - documented == set(), "written to --json but not in docs/pipeline.md's table"
    parts = [name.split(".") for name in written]
    containers = {".".join(p[:n]) for p in parts for n in range(1, len(p))}
    stale = {name for name in documented - written if name not in containers}
    assert stale == set(), "in docs/pipeline.md's --json table but written by no run"
