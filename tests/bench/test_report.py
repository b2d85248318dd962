"""Terminal tables, JSON documents and CSV from real measurements."""

from __future__ import annotations

import copy
import csv
import json
import re
from pathlib import Path

import pytest

from rtseg.bench.environment import fingerprint
from rtseg.bench.measure import BenchConfig, run_config
from rtseg.bench.quality import NO_CITYSCAPES
from rtseg.bench.report import (
    SCHEMA_ID,
    build_document,
    format_results,
    format_table,
    result_row,
    table_document,
    write_json,
    write_results_csv,
    write_table_csv,
)
from rtseg.bench.stats import StopRule
from rtseg.bench.table import load_table, table_path

RULE = StopRule(min_samples=3, max_samples=4, max_seconds=10.0)


@pytest.fixture(scope="module")
def results() -> list[dict]:
    # ENet at the size of the table's ENet row, so that the table picks the measurement up.
    source = "synthetic://drive?size=64x48&seed=1&frames=20"
    ok = run_config(BenchConfig(model="enet", size=(64, 48), source=source, warmup=1, rule=RULE, threads=1))
    skipped = run_config(BenchConfig(model="enet", size=(64, 48), precision="int8", source=source, rule=RULE))
    return [ok, skipped]


@pytest.fixture(scope="module")
def env() -> dict:
    return fingerprint()


def test_terminal_table_has_every_configuration(results) -> None:
    text = format_results(results)
    assert "enet torch fp32 64x48 every" in text and "skipped" in text and "precision" in text
    assert "stages, median ms: capture" in text and "weights: random init" in text
    assert "engine ms [95% CI]" in text


def test_a_p99_of_few_frames_says_how_few(results) -> None:
    """With fewer than 100 frames, a p99 is an interpolation between the two slowest."""
    frames = results[0]["pipeline"]["frames"]
    assert frames < 100 and f"(n={frames})" in format_results(results)
    many = copy.deepcopy(results[0])
    many["pipeline"]["frames"] = 100
    assert "(n=" not in format_results([many])


def test_notes_are_in_the_text_and_the_csv(results, env, tmp_path: Path) -> None:
    """A note (a phase cut short of --min-frames, say) was in the JSON and the text only."""
    noted = copy.deepcopy(results[0])
    noted["notes"] = ["end-to-end: 3 frames measured, fewer than --min-frames 8: the source ended", "two"]
    assert "  note: end-to-end: 3 frames measured, fewer than --min-frames 8" in format_results([noted])
    path = tmp_path / "r.csv"
    write_results_csv([noted, results[0]], env, path)
    rows = list(csv.DictReader(path.open()))
    assert rows[0]["notes"] == f"{noted['notes'][0]}; two" and rows[1]["notes"] == ""


def test_the_gpu_memory_column_says_whose_allocations_it_counts(results) -> None:
    cuda = copy.deepcopy(results[0])
    cuda["memory"]["gpu_peak_mib"] = 512.0
    assert ", torch CUDA 512 MiB" in format_results([cuda])


def test_terminal_output_gives_the_whole_reason_for_a_skip(results) -> None:
    reason = results[1]["reason"]
    assert len(reason) > 60  # longer than the grid's cell: the whole of it follows the grid
    assert f"enet torch int8 64x48 every: skipped: {reason}" in format_results(results)


def test_json_document(results, env, tmp_path: Path) -> None:
    doc = build_document(command="rtseg bench", environment=env, rule=RULE, results=results)
    path = tmp_path / "out" / "r.json"
    write_json(doc, path)
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA_ID and data["stop_rule"]["max_samples"] == 4
    assert data["hardware"].startswith(env["cpu"]["model"]) and len(data["results"]) == 2


def test_results_csv_carries_the_environment(results, env, tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    write_results_csv(results, env, path)
    rows = list(csv.DictReader(path.open()))
    assert [r["status"] for r in rows] == ["ok", "skipped"]
    ok = rows[0]
    assert float(ok["engine_fps"]) > 0 and float(ok["latency_p99_ms"]) >= float(ok["latency_p50_ms"])
    assert float(ok["deep_median_ms"]) > 0 and ok["keyframe_ratio"] == "1.0"
    assert ok["cpu"] == env["cpu"]["model"] and ok["lib_torch"] == env["libraries"]["torch"]
    assert ok["git_commit"] == (env["rtseg"]["commit"] or "")
    assert rows[1]["engine_fps"] == "" and "precision" in rows[1]["reason"]


def test_table_with_measured_rows(results, env, tmp_path: Path, monkeypatch) -> None:
    rows = load_table(table_path("cityscapes"))
    # Pretend the ENet row was published at 64x48 so the tiny measurement matches it.
    rows = [r if r.model != "ENet" else type(r)(**{**r.__dict__, "resolution": (64, 48)}) for r in rows]
    doc = table_document("cityscapes", table_path("cityscapes"), rows, results, env)
    enet = next(r for r in doc["rows"] if r["model"] == "ENet")
    statuses = sorted(m["status"] for m in enet["measured"])
    assert statuses == ["ok", "skipped"]
    ok = next(m for m in enet["measured"] if m["status"] == "ok")
    assert ok["engine_fps"] > 0 and ok["miou"] == NO_CITYSCAPES and "GPU:" in ok["hardware"]
    assert all(not r["measured"] for r in doc["rows"] if r["model"] != "ENet")
    text = format_table(doc)
    for row in rows:
        assert row.model in text
    assert "measured: torch fp32" in text and NO_CITYSCAPES in text and "sources:" in text
    deeplab = next(line for line in text.splitlines() if line.startswith("DeepLabV3+ MobileNetV2"))
    assert " 70.71 " in deeplab  # the published val mIoU as published, not rounded to 70.7
    path = tmp_path / "t.csv"
    write_table_csv(doc, env, path)
    lines = list(csv.DictReader(path.open()))
    assert len(lines) == len(rows) + 1  # ENet appears once per measurement
    assert {line["measured_status"] for line in lines if line["model"] == "ENet"} == {"ok", "skipped"}
    # the published GPU column stays the publication's (none given for ENet), the machine's is apart
    assert {line["gpu"] for line in lines if line["model"] == "ENet"} == {""}
    machine_gpu = "; ".join(g["name"] for g in env["gpus"]) or "none"
    assert {line["machine_gpu"] for line in lines if line["measured_status"]} == {machine_gpu}


def test_table_says_on_which_device_and_engine_each_row_ran(results, env) -> None:
    # On a GPU machine the hardware line names the GPU; a CPU measurement must not show it.
    gpu_env = {**env, "gpus": [{"index": 0, "name": "NVIDIA H200", "memory_gb": 139.8}]}
    cpu = results[0]
    trt = {
        **cpu,
        "label": "enet tensorrt fp16 64x48 every",
        "config": {**cpu["config"], "backend": "tensorrt", "precision": "fp16", "device": "cuda"},
        "engine_info": {**cpu["engine_info"], "backend": "tensorrt", "device": "cuda"},
    }
    rows = load_table(table_path("cityscapes"))
    rows = [r if r.model != "ENet" else type(r)(**{**r.__dict__, "resolution": (64, 48)}) for r in rows]
    doc = table_document("cityscapes", table_path("cityscapes"), rows, [cpu, trt], gpu_env)
    lines = [line for line in format_table(doc).splitlines() if line.startswith("  measured:")]
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines]  # name, resolution, FPS, ms, GPU, TensorRT
    assert [c[0] for c in cells] == ["measured: torch fp32", "measured: tensorrt fp16"]
    assert [c[4:6] for c in cells] == [["none (CPU)", "no"], ["NVIDIA H200", "yes"]]


def test_a_pipeline_only_row_says_end_to_end_and_shows_its_fps(results, env) -> None:
    """With --pipeline-only a row said "engine-only" with '-' in the FPS and ms columns."""
    rows = load_table(table_path("cityscapes"))
    rows = [r if r.model != "ENet" else type(r)(**{**r.__dict__, "resolution": (64, 48)}) for r in rows]
    doc = table_document("cityscapes", table_path("cityscapes"), rows, results[:1], env)
    (m,) = next(r for r in doc["rows"] if r["model"] == "ENet")["measured"]
    m.update(engine_fps=None, engine_ms=None, engine_ci_ms=[None, None], pipeline_fps=8.0)
    (line,) = [line for line in format_table(doc).splitlines() if line.startswith("  measured:")]
    cells = re.split(r"\s{2,}", line.strip())  # name, resolution, FPS, ms, GPU, TensorRT, what
    assert cells[2:4] == ["8.00", "125.0"]
    assert "engine-only" not in line and cells[6].startswith("this machine, end-to-end (--pipeline-only)")
    m["pipeline_fps"] = None  # a single measured frame has no FPS
    (line,) = [line for line in format_table(doc).splitlines() if line.startswith("  measured:")]
    assert "engine-only" not in line and "too few frames for an FPS" in line


def test_the_latency_column_says_what_it_spans(results) -> None:
    """The latency column sat next to the e2e FPS without saying it leaves capture, overlay and
    encode out."""
    text = format_results(results)
    assert "latency* p50/p90/p99 ms" in text
    assert "* latency: from a frame's read (decoded, at frame size) to its labels at frame size" in text
    assert "not capture, overlay or encode" in text
    engine_only = {**results[0], "pipeline": None}
    assert "* latency:" not in format_results([engine_only])  # no latency column to explain


def test_in_process_memory_says_it_includes_earlier_configurations(results) -> None:
    """--in-process peak RSS is the whole process's (espnet: 437 MiB after enet, 285 MiB alone):
    the table showed it as the configuration's own."""
    shared = copy.deepcopy(results[0])
    shared["memory"]["in_process"] = True
    text = format_results([shared])
    assert "peak RSS*" in text and "* peak RSS: measured --in-process" in text
    assert "earlier configurations" in text
    assert result_row(shared)["memory_in_process"] is True
    alone = copy.deepcopy(results[0])
    alone["memory"]["in_process"] = False
    assert "peak RSS*" not in format_results([alone]) and "--in-process" not in format_results([alone])
