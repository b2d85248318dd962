"""A configuration measured in a fresh process."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from rtseg.bench.measure import BenchConfig
from rtseg.bench.stats import StopRule
from rtseg.bench.worker import _die_with_parent, run_isolated, timeout_for

CFG = BenchConfig(
    model="enet",
    size=(64, 48),
    source="synthetic://drive?size=96x64&seed=1&frames=20",
    warmup=1,
    rule=StopRule(min_samples=3, max_samples=4, max_seconds=10.0),
    threads=1,
)


def test_result_comes_back_from_the_child() -> None:
    r = run_isolated(CFG)
    assert r["status"] == "ok", r["reason"]
    assert r["label"] == CFG.label and r["engine"]["frames"] <= 4 and r["pipeline"]["frames"] <= 4
    assert r["memory"]["process_peak_rss_mib"] >= r["memory"]["peak_rss_mib"] > 10


def test_timeout_becomes_a_failed_result() -> None:
    r = run_isolated(CFG, timeout=0.01)
    assert r["status"] == "failed" and "timed out" in r["reason"] and r["engine"] is None


def test_a_failed_result_records_a_stream_url_without_its_password() -> None:
    """The record of a configuration whose worker failed wrote the source's password in clear."""
    url = "rtsp://admin:pw9secret@127.0.0.1:9/x?token=tok123secret"
    r = run_isolated(replace(CFG, source=url), timeout=0.01)
    assert r["status"] == "failed" and r["config"]["source"] == "rtsp://admin:***@127.0.0.1:9/x?token=***"
    assert "secret" not in repr(r)


def test_timeout_budget() -> None:
    assert timeout_for(CFG) == 900.0 + 30.0
    assert timeout_for(BenchConfig(model="enet", fixed_frames=True)) is None


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_worker_dies_with_the_bench_process() -> None:
    # SIGTERM or SIGKILL to `rtseg bench` left its worker measuring on, loading the cores for minutes.
    pids_read, pids_write = os.pipe()
    armed_read, armed_write = os.pipe()
    bench = os.fork()
    if bench == 0:  # the bench process: starts a worker, waits until it is armed, dies
        worker = os.fork()
        if worker == 0:
            _die_with_parent(os.getppid())
            os.write(armed_write, b"1")
            time.sleep(30)
            os._exit(0)
        os.write(pids_write, f"{worker}\n".encode())
        os.read(armed_read, 1)
        os._exit(0)
    os.waitpid(bench, 0)
    worker = int(os.read(pids_read, 64))
    deadline = time.monotonic() + 5
    while not _gone(worker) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _gone(worker)
