"""What this machine computes with: CPU model, instruction sets, cores and CUDA devices.

Shared by the benchmark fingerprint and by ``backend="auto"``, whose stored choice is only valid
on the hardware it was measured on: the same checkout (a container image, a shared home) can
move to a CPU with other vector units, where another backend is fastest.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# CPU features that decide which kernels the engines can use.
FLAGS_OF_INTEREST = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_cores() -> tuple[int, int]:
    """(physical, logical) cores; physical falls back to logical when it cannot be told."""
    logical = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or logical
        logical = psutil.cpu_count(logical=True) or logical
    except ImportError:
        physical = logical
    return int(physical), int(logical)


def usable_cores() -> int:
    """Physical cores this process may run on. taskset, cpusets and a container's CPU pinning leave
    it fewer than the machine has; a thread per physical core of the machine then shares them
    (ONNX Runtime pinned to one of two cores: 2 threads, 10-14 % slower than 1)."""
    physical, _ = cpu_cores()
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return physical
    return max(1, min(physical, allowed))


def available_memory_bytes() -> int:
    """Memory the system could give this process now without swapping."""
    import psutil

    return int(psutil.virtual_memory().available)


def cpu_flags() -> list[str]:
    """The flags of ``FLAGS_OF_INTEREST`` this CPU has, in that order."""
    flags = set(_cpuinfo().get("flags", "").split())
    return [f for f in FLAGS_OF_INTEREST if f in flags]


def gpus() -> list[dict[str, Any]]:
    """CUDA devices torch can see (name and memory); empty on CPU-only machines."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
    return out


def signature(device: str) -> dict[str, Any]:
    """What a speed measurement on ``device`` depends on besides the software.

    Virtual machines often report one model name ("AMD EPYC") for different CPUs, so the
    instruction-set flags and core count are part of it; a CUDA device adds its name.
    """
    physical, logical = cpu_cores()
    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "flags": cpu_flags(),
        "cores": [physical, logical],
        "usable_cores": usable_cores(),  # a choice measured unpinned does not hold pinned
    }
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        names = {g["index"]: g["name"] for g in gpus()}
        out["gpu"] = names.get(index)
    return out
