"""Which process built an engine or Segmenter, checked cheaply on every call.

Native inference handles do not survive ``os.fork``: in a forked child ONNX Runtime hangs
destroying a session and OpenVINO destroying a Core or compiled model (each waits for pool
threads fork did not copy), and torch's OpenMP hangs on the first frame. Engines and Segmenters
record the process that built them; in another process they refuse to run. In a forked child the
parent's handles are never destroyed, neither by ``close()`` nor at the child's exit: they belong
to the parent, and the memory is the parent's copy-on-write pages anyway.
"""

from __future__ import annotations

import os
import weakref

from .errors import ConfigError

# This process's id, kept current across os.fork by the hook below: the per-call check is one int
# compare, not a getpid system call.
current: int = os.getpid()

# What holds native handles in this process: engines (weakly: a closed, dropped engine goes) and
# process-wide objects such as OpenVINO's Core (strongly, they live until exit anyway).
_engines: weakref.WeakSet[object] = weakref.WeakSet()
_process_wide: list[object] = []


def built_elsewhere(what: str, pid: int) -> ConfigError:
    """The error for using ``what`` (built in process ``pid``) in this, another, process."""
    return ConfigError(
        f"this {what} was built in process {pid}, and this is process {current} (a fork of it?): "
        "its native sessions and thread pools do not survive os.fork; build one in this process "
        "(after the fork) or use the 'spawn' or 'forkserver' multiprocessing start method"
    )


def track(obj: object, *, weak: bool = True) -> None:
    """Register ``obj`` as holding this process's native handles: a forked child never destroys it."""
    if weak:
        _engines.add(obj)
    else:
        _process_wide.append(obj)


def _after_fork_in_child() -> None:
    global current
    current = os.getpid()
    inherited = [*_engines, *_process_wide]
    _engines.clear()
    _process_wide.clear()
    if inherited:
        import ctypes

        # One reference that is never given back: not even the interpreter's teardown at this
        # child's exit destroys them (that teardown is where a forked child hung).
        for obj in inherited:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
