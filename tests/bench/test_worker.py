"""A configuration measured in a fresh process."""

from __future__ import annotations

from rtseg.bench.measure import BenchConfig
from rtseg.bench.stats import StopRule
from rtseg.bench.worker import run_isolated, timeout_for

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
    assert r["memory"]["process_peak_rss_mb"] >= r["memory"]["peak_rss_mb"] > 10


def test_timeout_becomes_a_failed_result() -> None:
    r = run_isolated(CFG, timeout=0.01)
    assert r["status"] == "failed" and "timed out" in r["reason"] and r["engine"] is None


def test_timeout_budget() -> None:
    assert timeout_for(CFG) == 900.0 + 30.0
    assert timeout_for(BenchConfig(model="enet", fixed_frames=True)) is None
