"""Console output to a reader that has gone (``| head``, a dead log collector) is dropped, and the
run it reports on carries on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rtseg.cli.console import ReaderSafeStream


def test_writes_to_a_closed_pipe_are_dropped_from_then_on() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w", buffering=1)
    safe = ReaderSafeStream(stream)
    print("first", file=safe, flush=True)
    assert os.read(read_end, 100) == b"first\n" and not safe.reader_gone
    os.close(read_end)
    print("to nobody", file=safe, flush=True)
    assert safe.reader_gone
    assert safe.write("dropped") == len("dropped")
    safe.flush()
    stream.close()  # flushes what it still held: to /dev/null now, so no BrokenPipeError


def test_a_run_whose_console_reader_went_away_finishes_with_its_outputs(tmp_path: Path) -> None:
    """Both console streams go to a pipe closed before the first byte is read."""
    video, report = tmp_path / "out.avi", tmp_path / "report.json"
    argv = ["synthetic://drive?size=96x64&frames=12", str(video), "--json", str(report), "--backend", "torch"]
    script = "import sys\nfrom rtseg.cli import main\nraise SystemExit(main(sys.argv[1:]))\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "run", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "RTSEG_ENGINE_DIR": str(tmp_path / "engines")},
    )
    proc.stdout.close()
    assert proc.wait(timeout=120) == 0
    data = json.loads(report.read_text())
    assert data["complete"] and data["frames"] == 12
    assert data["sinks"][str(video)]["written"] == 12


@pytest.mark.parametrize(
    ("signum", "status", "said"),
    [(signal.SIGTERM, 0, "stopped (SIGTERM)"), (signal.SIGINT, 130, "interrupted")],
)
@pytest.mark.usefixtures("sigint_delivered")
def test_a_stop_while_the_commands_load_is_answered_in_one_line(signum: int, status: int, said: str) -> None:
    # Building the parser imports torch and every command (seconds): SIGTERM killed the process
    # without a word (143), Ctrl-C printed a 20-line traceback from inside `import torch`.
    child = (
        "import sys, time, rtseg.cli as cli\n"
        "def slow():  # as the imports are: the stop comes while they run\n"
        "    print('up', flush=True)\n"
        "    time.sleep(30)\n"
        "cli.build_parser = slow\n"
        "sys.exit(cli.main(['--help']))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", child],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "up\n"
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    assert err.strip() == f"rtseg: {said} while starting"
