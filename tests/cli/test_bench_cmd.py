"""`rtseg bench` end to end: a tiny sweep validated against bench/schema.json, and the table."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest

import rtseg.bench.runner
from rtseg.cli import main

jsonschema = pytest.importorskip(
    "jsonschema", reason="schema validation needs jsonschema (pip install -e .[dev])"
)

REPO = Path(__file__).resolve().parent.parent.parent
SCHEMA = json.loads((REPO / "bench" / "schema.json").read_text())
TINY = [
    "--size",
    "64x48",
    "--source",
    "synthetic://drive?size=96x64&seed=1",
    "--frames",
    "5",
    "--min-frames",
    "3",
    "--warmup",
    "1",
    "--threads",
    "1",
    "--no-progress",
]


def _validate(path: Path) -> dict:
    data = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    errors = [
        f"{e.json_path}: {e.message}" for e in jsonschema.Draft202012Validator(SCHEMA).iter_errors(data)
    ]
    assert not errors, errors[:5]
    return data


def test_sweep_json_matches_the_schema(tmp_path: Path, capsys) -> None:
    out, table = tmp_path / "r.json", tmp_path / "r.csv"
    rc = main(
        [
            "bench",
            "--model",
            "espnet",
            "enet",
            "--precision",
            "fp32",
            "int8",
            *TINY,
            "--in-process",
            "--json",
            str(out),
            "--csv",
            str(table),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "espnet torch fp32 64x48 every" in text and "skipped" in text
    assert "* peak RSS: measured --in-process" in text  # it includes what espnet left for enet
    data = _validate(out)
    assert [r["status"] for r in data["results"]] == ["ok", "skipped", "ok", "skipped"]
    assert [r["memory"]["in_process"] for r in data["results"] if r["memory"]] == [True, True]
    assert data["environment"]["cpu"]["physical_cores"] >= 1 and data["table"] is None
    assert len(list(csv.DictReader(table.open()))) == 4


def test_scheduler_comparison_in_fresh_processes(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    rc = main(["bench", "--model", "enet", "--scheduler", "every", "clockwork", *TINY, "--json", str(out)])
    assert rc == 0
    data = _validate(out)
    every, clock = data["results"]
    assert every["pipeline"]["frames"] == clock["pipeline"]["frames"] == 5  # same frames for both
    assert clock["engine"] is None and clock["pipeline"]["agreement"]["frames"] == 5  # no warm-up
    assert every["pipeline"]["agreement"] is None


def test_table_prints_every_row_and_measures_implemented_ones(tmp_path: Path, capsys) -> None:
    out, plot, table = tmp_path / "t.json", tmp_path / "t.png", tmp_path / "t.csv"
    rc = main(
        [
            "bench",
            "--table",
            "cityscapes",
            "--model",
            "enet",
            "--engine-only",
            "--frames",
            "2",
            "--min-frames",
            "2",
            "--warmup",
            "0",
            "--threads",
            "2",
            "--in-process",
            "--no-progress",
            "--json",
            str(out),
            "--plot",
            str(plot),
            "--csv",
            str(table),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    data = _validate(out)
    rows = data["table"]["rows"]
    assert len(rows) == 22
    for row in rows:
        assert row["model"] in text
    enet = next(r for r in rows if r["model"] == "ENet")
    (m,) = enet["measured"]
    assert m["status"] == "ok" and m["engine_fps"] > 0 and m["miou"].startswith("n/a")
    assert data["results"][0]["engine_info"]["input_size"] == [1024, 512]
    assert "measured on:" in text and plot.stat().st_size > 10_000
    assert any(line["measured_status"] == "ok" for line in csv.DictReader(table.open()))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--table", "cityscapes", "--size", "64x48"], "--size does not apply"),
        (["--table", "cityscapes", "--scheduler", "clockwork"], "leave --scheduler out"),
        (
            ["--engine-only", "--scheduler", "every", "clockwork"],
            "--engine-only times the engine alone, which does not depend on the scheduler",
        ),
        # models without a row were dropped silently while one of them had a row
        (
            ["--table", "cityscapes", "--model", "enet", "icnet-r18", "espnet-c"],
            "--model icnet-r18 espnet-c: no implemented row of the cityscapes table; the rows it "
            "measures are enet, icnet-r50, espnet",
        ),
        (["--table", "cityscapes", "--model", "icnet-r18"], "--model icnet-r18: no implemented row"),
        (["--camvid"], "--camvid"),
        (["--model", "espnet", "enet", "--weights", "w.pt"], "one model"),
        (["--frames", "0"], "--frames"),
        (["--frames", "3", "--min-frames", "10"], "--min-frames must be between 1 and --frames (3), got 10"),
        (["--min-frames", "0"], "argument --min-frames: expected a whole number >= 1, got 0"),
        # each flag named, not the dataclass field it fills (StopRule.rel_halfwidth, BenchConfig.warmup)
        (["--ci", "0"], "argument --ci: expected a fraction in (0, 1), like 0.025, got 0"),
        (["--ci", "1.5"], "argument --ci: expected a fraction in (0, 1), like 0.025, got 1.5"),
        (["--max-seconds", "0"], "argument --max-seconds: expected a finite number > 0, got 0"),
        (["--warmup", "-1"], "argument --warmup: expected a whole number >= 0, got -1"),
        (["--threads", "0"], "argument --threads: expected a whole number >= 1, got 0"),
        (["--backend", "torch", "torch"], "--backend lists torch more than once"),
        (["--size", "64x48", "64x48"], "--size lists (64, 48) more than once"),
        # a repeated flag adds to the list: argparse kept the last one and measured it alone
        (["--backend", "torch", "--backend", "torch"], "--backend lists torch more than once"),
        (["--engine-only", "--scheduler", "every", "--scheduler", "clockwork"], "one --scheduler"),
    ],
)
def test_bad_option_combinations(argv: list[str], message: str, capsys) -> None:
    try:
        code = main(["bench", *argv, "--no-progress", "--in-process"])
    except SystemExit as exc:  # argparse refuses a bad value itself
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "name", "message"),
    [
        ("--plot", "plot.xyz", "--plot {path}: cannot write .xyz images; use one of "),
        ("--csv", ".", "--csv {path} is a folder"),
        ("--json", "blocker/out.json", "--json {path}: {tmp}/blocker is a file, not a folder"),
    ],
)
def test_unwritable_outputs_are_refused_before_measuring(
    tmp_path: Path, capsys, option: str, name: str, message: str
) -> None:
    (tmp_path / "blocker").write_text("")
    path = tmp_path / name if name != "." else tmp_path
    assert main(["bench", *TINY, "--in-process", option, str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing was measured
    assert captured.err.startswith("rtseg bench: error: " + message.format(path=path, tmp=tmp_path))
    assert len(captured.err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "target", ["the source", "a hard link to the source", "the weights", "the table", "--json"]
)
def test_an_output_over_an_input_or_another_output_is_refused_before_measuring(
    tmp_path: Path, capsys, monkeypatch, target: str
) -> None:
    """--csv in.avi turned the --source video into a CSV, --json over the --weights replaced the
    checkpoint, and --csv and --json naming one file kept only the CSV: bench checked no output
    against the inputs or the other outputs."""
    import cv2
    import numpy as np

    from rtseg.bench import table
    from rtseg.models import DEFAULT_WEIGHTS

    video = tmp_path / "in.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    weights = tmp_path / "w.pt"
    weights.write_bytes(DEFAULT_WEIGHTS.read_bytes())
    published = tmp_path / "table.csv"
    published.write_text(table.TABLES["cityscapes"].read_text())
    monkeypatch.setitem(table.TABLES, "cityscapes", published)
    argv = ["bench", *TINY, "--in-process", "--source", str(video), "--weights", str(weights)]
    output, path, message = {
        "the source": ("--csv", video, "an input (--source)"),
        "a hard link to the source": ("--csv", tmp_path / "link.csv", "an input (--source)"),
        "the weights": ("--json", tmp_path / "." / "w.pt", "an input (--weights)"),
        "the table": ("--csv", published, "an input (the published table)"),
        "--json": ("--csv", tmp_path / "out", "--json {dir}/out and --csv {path} are one file"),
    }[target]
    if target == "a hard link to the source":
        path.hardlink_to(video)
    if target == "the table":
        argv += ["--plot", str(tmp_path / "plot.png")]
    if target == "--json":
        argv += ["--json", str(tmp_path / "sub" / ".." / "out")]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main([*argv, output, str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing was measured
    assert captured.err.startswith("rtseg bench: error: ") and len(captured.err.strip().splitlines()) == 1
    assert message.format(dir=tmp_path / "sub" / "..", path=path) in captured.err, captured.err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("form", ["--source URL", "--source=URL"])
def test_a_stream_password_and_token_are_written_nowhere(
    tmp_path: Path, capsys, monkeypatch, form: str
) -> None:
    """--json wrote a stream's password and token in clear in "command", "options" and each
    result's config, though docs/pipeline.md says bench results show them as ***."""
    import sys

    url = "rtsp://admin:pw9secret@127.0.0.1:9/x?token=tok123secret"
    shown = "rtsp://admin:***@127.0.0.1:9/x?token=***"
    out, rows = tmp_path / "r.json", tmp_path / "r.csv"
    argv = ["bench", *TINY[:2], *TINY[4:], "--in-process", "--pipeline-only"]
    argv += [*form.replace("URL", url).split(), "--json", str(out), "--csv", str(rows)]
    monkeypatch.setattr(sys, "argv", ["rtseg", *argv])  # "command" is the command line as typed
    assert main(argv) == 1  # nothing answers there: the configuration failed
    captured = capsys.readouterr()
    for text in (out.read_text(), rows.read_text(), captured.out, captured.err):
        assert "pw9secret" not in text and "tok123secret" not in text
    data = _validate(out)
    assert f"{form.replace('URL', shown)} --json" in data["command"]
    assert data["options"]["source"] == shown and data["results"][0]["config"]["source"] == shown


def test_a_missing_published_table_is_refused_before_measuring(tmp_path: Path, capsys, monkeypatch) -> None:
    """--plot read the table only after measuring: with it missing (an installed rtseg did not
    ship it) every result was lost, --json included."""
    from rtseg.bench import table

    missing = tmp_path / "nosuch.csv"
    monkeypatch.setitem(table.TABLES, "cityscapes", missing)
    out, plot = tmp_path / "r.json", tmp_path / "p.png"
    argv = ["bench", *TINY, "--in-process", "--engine-only", "--json", str(out), "--plot", str(plot)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing was measured
    assert captured.err == f"rtseg bench: error: published table {missing} not found\n"


def test_a_source_that_does_not_open_is_refused_before_any_engine_is_built(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nosuch.mp4"
    assert main(["bench", *TINY, "--in-process", "--source", str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no configuration built its engine first
    assert captured.err.startswith("rtseg bench: error: ") and str(missing) in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_camvid_without_its_data_is_refused_before_measuring(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("RTSEG_DATA", str(tmp_path))
    argv = ["bench", "--table", "cityscapes", "--camvid", "--model", "enet", "--engine-only", "--frames", "1"]
    assert main([*argv, "--in-process", "--no-progress", "--json", str(tmp_path / "t.json")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # not after minutes of measuring, with the results then lost
    message = f"CamVid or the ESPNet CamVid checkpoint is not in {tmp_path} (set RTSEG_DATA)"
    assert captured.err == f"rtseg bench: error: {message}\n"


def test_a_late_write_failure_keeps_the_printed_results(tmp_path: Path, capsys, monkeypatch) -> None:
    import errno

    from rtseg.cli import bench_cmd

    def disk_full(document, path) -> None:  # the disk filled up while the benchmark ran
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bench_cmd, "write_json", disk_full)
    target = tmp_path / "bench.json"
    assert main(["bench", *TINY, "--in-process", "--engine-only", "--json", str(target)]) == 2
    captured = capsys.readouterr()
    assert "engine" in captured.out and "wrote" not in captured.out
    err = captured.err.strip()
    assert err.startswith(f"rtseg bench: error: --json: cannot write {target}: ") and "\n" not in err


def _ctrl_c() -> None:
    raise KeyboardInterrupt  # what Ctrl-C raises while a configuration is measured


def _sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # bench's handler interrupts the measurement


@pytest.mark.parametrize(
    ("stop", "status", "said"), [(_ctrl_c, 130, "interrupted"), (_sigterm, 143, "stopped (SIGTERM)")]
)
def test_a_stop_keeps_the_finished_configurations(
    tmp_path: Path, capsys, monkeypatch, stop, status, said
) -> None:
    measure = rtseg.bench.runner.run_config

    def stopped_after_enet(cfg):
        if cfg.model != "enet":
            stop()
        return measure(cfg)

    monkeypatch.setattr(rtseg.bench.runner, "run_config", stopped_after_enet)
    out = tmp_path / "r.json"
    argv = ["bench", "--model", "enet", "espnet", *TINY, "--engine-only", "--in-process", "--json", str(out)]
    assert main(argv) == status
    captured = capsys.readouterr()
    assert "enet torch fp32 64x48 every" in captured.out and "espnet torch" not in captured.out
    assert f"{said}: 1 configuration(s) finished" in captured.err
    assert [r["label"] for r in _validate(out)["results"]] == ["enet torch fp32 64x48 every"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # bench's handler is not left behind
    out.unlink()
    del argv[2]  # only espnet: stopped in the first configuration, nothing to report or write
    assert main(argv) == status
    assert capsys.readouterr().err.endswith(
        f"rtseg bench: {said}" + (" before any configuration finished\n" if status == 143 else "\n")
    )
    assert not out.exists()


def test_a_pipeline_only_sweep_plots_its_end_to_end_fps(tmp_path: Path, monkeypatch) -> None:
    """A sweep's --plot took only results with an engine FPS: --pipeline-only plotted no point."""
    from rtseg.cli import bench_cmd

    plotted: list[dict] = []
    monkeypatch.setattr(bench_cmd, "plot_quality_speed", lambda table, path: plotted.append(table))
    argv = ["bench", "--model", "espnet", *TINY, "--pipeline-only", "--in-process"]
    assert main([*argv, "--plot", str(tmp_path / "p.png")]) == 0
    (table,) = plotted
    (m,) = next(r for r in table["rows"] if r["rtseg_model"] == "espnet")["measured"]
    assert m["engine_fps"] is None and m["pipeline_fps"] > 0


def test_a_sweep_at_another_size_is_plotted_without_the_hardware_gap_line(
    tmp_path: Path, monkeypatch
) -> None:
    """The sweep's 64x48 point was joined to ESPNet's published 1024x512 point by the dotted line
    that stands for the hardware difference."""
    from matplotlib.axes import Axes

    drawn: list[str] = []
    scatter, plot = Axes.scatter, Axes.plot

    def scattered(self, *args, **kwargs):
        drawn.append(f"point {kwargs.get('marker')}")
        return scatter(self, *args, **kwargs)

    def plotted(self, *args, **kwargs):
        drawn.append(f"line {kwargs.get('linestyle')}")
        return plot(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "scatter", scattered)
    monkeypatch.setattr(Axes, "plot", plotted)
    argv = ["bench", "--model", "espnet", *TINY, "--engine-only", "--in-process"]
    assert main([*argv, "--plot", str(tmp_path / "p.png")]) == 0
    assert "point D" in drawn and "line :" not in drawn
