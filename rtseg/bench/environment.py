"""The environment fingerprint stored with every benchmark result.

A number is only comparable with another taken on the same hardware, library versions and code,
and on a machine that was not busy: the fingerprint records all of that, including the load
average when the run started.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .._version import __version__

_REPO = Path(__file__).resolve().parent.parent.parent
# CPU features that decide which kernels the engines can use.
_FLAGS_OF_INTEREST = (
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
# (name in the report, distribution names to look for, first found wins)
_LIBRARIES = (
    ("torch", ("torch",)),
    ("onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")),
    ("openvino", ("openvino",)),
    (
        "opencv",
        (
            "opencv-python-headless",
            "opencv-python",
            "opencv-contrib-python",
            "opencv-contrib-python-headless",
        ),
    ),
    ("numpy", ("numpy",)),
    ("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu11")),
    ("onnx", ("onnx",)),
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


def cpu_flags() -> list[str]:
    flags = set(_cpuinfo().get("flags", "").split())
    return [f for f in _FLAGS_OF_INTEREST if f in flags]


def memory_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


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


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that decide speed; None when not installed."""
    versions: dict[str, str | None] = {}
    for name, distributions in _LIBRARIES:
        found = None
        for dist in distributions:
            try:
                found = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        versions[name] = found
    return versions


def git_state(repo: Path = _REPO) -> dict[str, Any]:
    """The checkout's commit and whether tracked files differ from it (None outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def fingerprint() -> dict[str, Any]:
    physical, logical = cpu_cores()
    return {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": {
            "model": cpu_model(),
            "physical_cores": physical,
            "logical_cores": logical,
            "flags": cpu_flags(),
        },
        "memory_gb": memory_gb(),
        "gpus": gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "rtseg": {"version": __version__, **git_state()},
        "load_average": load_average(),
    }


def hardware_line(fp: dict[str, Any]) -> str:
    """'AMD EPYC, 2 physical cores (2 logical), GPU: none' for tables and plot legends."""
    cpu = fp["cpu"]
    gpu = ", ".join(g["name"] for g in fp["gpus"]) or "none"
    return (
        f"{cpu['model']}, {cpu['physical_cores']} physical cores ({cpu['logical_cores']} logical), GPU: {gpu}"
    )
