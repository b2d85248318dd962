"""atomic_write: whole files or none, created as the process's umask says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtseg.atomic import atomic_write, atomic_write_text

REPO = Path(__file__).resolve().parent.parent

# In a child process: os.umask changes the mask of every thread of the process that sets it.
UMASK_CHECK = """
import os, stat, sys
from rtseg.atomic import atomic_write_bytes

os.umask(int(sys.argv[2], 8))
path = atomic_write_bytes(os.path.join(sys.argv[1], "engine.onnx"), b"x")
atomic_write_bytes(path, b"y")  # replacing a file makes a new one, with the mode anew
print(oct(stat.S_IMODE(path.stat().st_mode)))
"""


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize(("umask", "mode"), [("077", "0o600"), ("022", "0o644"), ("002", "0o664")])
def test_files_get_the_mode_the_umask_gives(tmp_path: Path, umask: str, mode: str) -> None:
    """Every file was chmod-ed to 0644: a host running under umask 077 still had its checkpoints,
    engines and reports readable by every user of the machine."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", UMASK_CHECK, str(tmp_path), umask],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == mode
    assert [p.name for p in tmp_path.iterdir()] == ["engine.onnx"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "report.json", "old")

    def fail(f: object) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
