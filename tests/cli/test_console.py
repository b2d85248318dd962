"""Console output to a reader that has gone (``| head``, a dead log collector) is dropped, and the
run it reports on carries on."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rtseg.cli import main
from rtseg.cli.console import ReaderSafeStream, StatusLine


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


@pytest.mark.parametrize("stderr_terminal", [True], indirect=True, ids=["stderr-a-terminal"])
def test_a_status_line_without_escapes_clears_a_longer_one_with_spaces_within_the_width(
    stderr_terminal: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERM", "dumb")
    monkeypatch.setenv("COLUMNS", "10")
    monkeypatch.setattr(sys, "stderr", stderr_terminal)
    status = StatusLine()
    status.show("1 frames 0.0 FPS")
    status.show("12 fr")
    status.end()
    assert stderr_terminal.getvalue() == "\r1 frames \r12 fr    \n"


def _tiny_camvid(root: Path) -> Path:
    """A CamVid-layout test split of two 64x48 frames."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for folder in ("test", "testannot"):
        (root / folder).mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(root / "test" / f"{i}.png"), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "testannot" / f"{i}.png"), rng.integers(0, 12, (48, 64), dtype=np.uint8))
    return root


@pytest.mark.parametrize("command", ["run", "eval", "bench"])
def test_a_command_without_a_stderr_runs_to_its_end(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``2>&-``: Python sets sys.stderr to None. `run` asked it isatty() and ended with status 1
    and no report; eval's and bench's progress bars wrote to it. Each runs, its progress on."""
    report = tmp_path / "report.json"
    monkeypatch.setenv("RTSEG_ENGINE_DIR", str(tmp_path / "engines"))
    monkeypatch.setattr(sys, "stderr", None)
    small = ["--size", "64x48", "--backend", "torch"]
    if command == "run":
        argv = ["run", "synthetic://drive?size=96x64&frames=3", "null://", *small]
    elif command == "eval":
        argv = ["eval", "--dataset", "camvid", "--root", str(_tiny_camvid(tmp_path / "camvid")), *small]
    else:
        argv = ["bench", "--model", "espnet", "--precision", "fp32", "--engine-only", "--in-process", *small]
        argv += ["--frames", "3", "--min-frames", "2", "--warmup", "1", "--threads", "1"]
    assert main([*argv, "--json", str(report)]) == 0
    assert json.loads(report.read_text())
    assert sys.stderr is None  # given back as it was
    out = capsys.readouterr().out
    assert "loading the engine" not in out and "error" not in out  # stderr's lines are not on stdout


def test_a_run_started_with_its_stderr_closed_writes_its_outputs(tmp_path: Path) -> None:
    """Descriptor 2 closed at start: the outputs must not take its place (a C++ library's
    messages to "stderr" would go into the video)."""
    video, report = tmp_path / "out.avi", tmp_path / "report.json"
    argv = ["synthetic://drive?size=96x64&frames=4", str(video), "--json", str(report), "--backend", "torch"]
    script = (
        "import os, sys\n"
        "from rtseg.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "print(os.readlink('/proc/self/fd/2'))  # what C++ libraries write to\n"
        "raise SystemExit(status)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "run", "--size", "64x48", *argv],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.close(2),
        env={**os.environ, "RTSEG_ENGINE_DIR": str(tmp_path / "engines")},
        timeout=120,
    )
    assert done.returncode == 0, done.stdout
    *said, fd2 = done.stdout.splitlines()
    assert fd2 == os.devnull and "loading the engine" not in done.stdout
    assert f"wrote {video} (4 frames)" in said
    data = json.loads(report.read_text())
    assert data["complete"] and data["sinks"][str(video)]["written"] == 4


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
