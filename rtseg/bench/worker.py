"""Each configuration in a fresh process: ``python -m rtseg.bench.worker`` reads a BenchConfig as
JSON on stdin and prints the result as one JSON line on stdout.

Thread pools (OpenMP, MKL, OpenBLAS, ONNX Runtime's) keep spinning after use and slow the next
library down, and a process's peak RSS only grows: a fresh process per configuration keeps one
configuration from disturbing the next. It costs the interpreter and torch start-up (a few
seconds), which is not timed.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..hardware import usable_cores
from ..source.base import scrubbed
from .measure import BenchConfig, run_config

RESULT_MARKER = "RTSEG-BENCH-RESULT "
PARENT_ENV = "RTSEG_BENCH_PARENT"  # the bench process's pid, for the worker to die with it
_PR_SET_PDEATHSIG = 1
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent.parent


def _failure(cfg: BenchConfig, reason: str) -> dict[str, Any]:
    return {
        "label": cfg.label,
        "config": cfg.to_record(),
        "status": "failed",
        "reason": scrubbed(reason, cfg.source),  # the worker's stderr may quote the source URL
        "notes": [],
        "weights": None,
        "engine_info": None,
        "threads": None,
        "setup_s": None,
        "engine": None,
        "pipeline": None,
        "memory": None,
    }


def timeout_for(cfg: BenchConfig) -> float | None:
    """Generous: setup (export, compile) plus both phases at their time limit, with slack."""
    if cfg.rule.max_seconds is None or cfg.fixed_frames:
        return None
    return 900.0 + 3 * cfg.rule.max_seconds


def run_isolated(cfg: BenchConfig, *, timeout: float | None = None) -> dict[str, Any]:
    """``run_config(cfg)`` in a child process; a crash or timeout becomes a 'failed' result."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_PARENT), env.get("PYTHONPATH")) if p)
    env[PARENT_ENV] = str(os.getpid())
    try:
        done = subprocess.run(
            [sys.executable, "-m", "rtseg.bench.worker"],
            input=json.dumps(cfg.to_dict()),
            capture_output=True,
            text=True,
            timeout=timeout_for(cfg) if timeout is None else timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return _failure(cfg, f"timed out after {exc.timeout:.0f} s")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    tail = " | ".join(done.stderr.strip().splitlines()[-5:])
    return _failure(cfg, f"worker exited with status {done.returncode} without a result: {tail}")


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this worker when the bench process dies, however it dies (SIGTERM,
    SIGKILL, a closed terminal): an orphaned worker would go on measuring for minutes and load the
    cores under whatever is measured next. Linux only; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl in this libc
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def main() -> int:
    _die_with_parent(int(os.environ.get(PARENT_ENV, os.getppid())))
    cfg = BenchConfig.from_dict(json.loads(sys.stdin.read()))
    if cfg.threads is None:
        import torch

        torch.set_num_threads(usable_cores())  # physical cores: hyper-threads slow convolutions down
    result = run_config(cfg)
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
