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
import re
import subprocess
from pathlib import Path
from typing import Any

from .._version import __version__
from ..hardware import cpu_cores, cpu_flags, cpu_model, gpus

# The folder that holds the rtseg package: its source checkout, or site-packages once installed.
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent.parent
_SETUP_NAME = re.compile(r"""name\s*=\s*["']rtseg["']""")
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


def memory_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


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


def source_checkout(root: Path = _PACKAGE_PARENT) -> bool:
    """Whether ``root`` is rtseg's source tree (its setup.py and the rtseg package), as when rtseg
    runs from a checkout; an installed rtseg's parent is site-packages."""
    setup = root / "setup.py"
    try:
        text = setup.read_text(encoding="utf-8") if setup.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return False
    return bool(_SETUP_NAME.search(text)) and (root / "rtseg" / "__init__.py").is_file()


def git_state(repo: Path = _PACKAGE_PARENT) -> dict[str, Any]:
    """The commit of rtseg's checkout and whether tracked files differ from it; None unless
    ``repo`` is rtseg's source tree and the top of its git work tree. (An installed rtseg lies in
    a venv, often inside the user's own repository: git found that one and recorded its commit.)"""
    none = {"commit": None, "dirty": None}
    if not source_checkout(repo):
        return none

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != repo.resolve():
        return none
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return none
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
    """'AMD EPYC (AVX2, AVX-512, VNNI), 2 physical cores (2 logical), GPU: none' for tables and
    plot legends: virtual machines give different CPUs one model name, the vector units tell them
    apart."""
    cpu = fp["cpu"]
    gpu = ", ".join(g["name"] for g in fp["gpus"]) or "none"
    isa = isa_summary(cpu.get("flags", []))
    model = f"{cpu['model']} ({isa})" if isa else cpu["model"]
    return f"{model}, {cpu['physical_cores']} physical cores ({cpu['logical_cores']} logical), GPU: {gpu}"


_ISA_NAMES = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_vnni", "VNNI"),
    ("avx512_bf16", "BF16"),
    ("amx_tile", "AMX"),
)


def isa_summary(flags: list[str]) -> str:
    """The vector extensions among ``flags`` that decide fp32 and int8 kernel speed."""
    return ", ".join(name for flag, name in _ISA_NAMES if flag in flags)
