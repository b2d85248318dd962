"""rtseg.process: which process built an engine or Segmenter, kept current across os.fork, and a
forked child that never destroys what its parent's native handles are held by."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtseg import process
from rtseg.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_current_is_this_process() -> None:
    assert process.current == os.getpid()


def test_built_elsewhere_names_the_object_both_processes_and_the_ways_out() -> None:
    error = process.built_elsewhere("torch engine (espnet)", 4242)
    assert isinstance(error, ConfigError)
    said = str(error)
    assert said.startswith("this torch engine (espnet) was built in process 4242, ")
    assert f"this is process {process.current} " in said
    assert "os.fork" in said and "'spawn'" in said and "'forkserver'" in said


# Run in a fresh interpreter that imports only rtseg.process (no torch, no threads), as
# tests/test_segmenter.py runs its fork check: forking the pytest process itself is not safe.
FORK_CHECK = """
import os, sys
from rtseg import process
from rtseg.errors import ConfigError


class Handles:
    # Stands for an engine or OpenVINO's Core: says so if it is destroyed in the child.
    def __init__(self, name):
        self.name = name

    def __del__(self):
        if os.getpid() != parent:
            os.write(1, f"destroyed {self.name} in the child\\n".encode())


def check(built_in):
    # the per-call check engines and Segmenters make
    if built_in != process.current:
        raise process.built_elsewhere("thing", built_in)


parent = os.getpid()
engine = Handles("engine")
core = Handles("core")
process.track(engine)
process.track(core, weak=False)
built_in = process.current
check(built_in)  # made in this process: passes

pid = os.fork()
if pid == 0:
    problems = []
    if process.current != os.getpid() or process.current == parent:
        problems.append(f"current is {process.current}, the child is {os.getpid()}, the parent {parent}")
    if list(process._engines) or process._process_wide:
        problems.append("the child's registry still lists the parent's objects")
    try:
        check(built_in)
        problems.append("the parent's object passed the check in the child")
    except ConfigError as e:
        if f"built in process {parent}, and this is process {os.getpid()}" not in str(e):
            problems.append(f"the refusal said: {e}")
    for problem in problems:
        os.write(1, f"{problem}\\n".encode())
    del engine, core  # the child's last references: the parent's objects must survive even so
    sys.exit(3 if problems else 0)  # through the interpreter's teardown, where children hung

_, status = os.waitpid(pid, 0)
check(built_in)  # the parent's own objects still pass in the parent
print(f"child exit {os.waitstatus_to_exitcode(status)}")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX")
def test_a_forked_child_refuses_the_parents_objects_and_never_destroys_them() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", FORK_CHECK], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "child exit 0\n", done.stdout + done.stderr[-2000:]
