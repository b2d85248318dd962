"""The hardware signature that a stored auto choice and every benchmark record are tied to."""

from __future__ import annotations

import os

import pytest

from rtseg import hardware


def test_signature_of_this_machine() -> None:
    sig = hardware.signature("cpu")
    assert sig["cpu"] and set(sig["flags"]) <= set(hardware.FLAGS_OF_INTEREST)
    physical, logical = sig["cores"]
    assert 1 <= physical <= logical == (os.cpu_count() or logical)
    assert "gpu" not in sig  # a CPU engine's speed does not depend on the GPUs present


def test_flags_come_from_cpuinfo_in_a_fixed_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        hardware, "_cpuinfo", lambda: {"model name": "AMD EPYC", "flags": "sse avx512_vnni fma avx2 avx512f"}
    )
    assert hardware.cpu_flags() == ["avx2", "fma", "avx512f", "avx512_vnni"]
    assert hardware.cpu_model() == "AMD EPYC"


def test_a_cuda_signature_names_its_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "gpus", lambda: [{"index": 1, "name": "NVIDIA H200", "memory_gb": 139.8}])
    assert hardware.signature("cuda:1")["gpu"] == "NVIDIA H200"
    assert hardware.signature("cuda")["gpu"] is None  # device 0 is not visible


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux's")
def test_a_process_pinned_to_fewer_cores_uses_and_records_that_many(monkeypatch: pytest.MonkeyPatch) -> None:
    """taskset -c 0 on a 2-core machine: ONNX Runtime still started 2 threads (10-14 % slower than
    1), and a stored auto choice measured unpinned was reused as if nothing had changed."""
    from rtseg.engine import ort_backend

    monkeypatch.setattr(hardware, "cpu_cores", lambda: (8, 16))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert hardware.usable_cores() == 3 and ort_backend.default_threads() == 3
    pinned = hardware.signature("cpu")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert hardware.usable_cores() == 8  # hyper-threads are not cores
    assert hardware.signature("cpu") != pinned
