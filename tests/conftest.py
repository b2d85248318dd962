"""Shared fixtures: where the real data is, and a skip when it is not there."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

# Two cores: one torch thread per test process keeps timings sane next to other work.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def outcome_in_thread() -> Callable[[Callable[[], object], float, str], list[object]]:
    """Run ``call`` on a daemon thread; fail with ``deadlock`` when it still runs after ``timeout``
    seconds (the deadlocks the close-from-a-signal-handler tests guard against). Returns what it
    returned or raised, in a list."""

    def run(call: Callable[[], object], timeout: float, deadlock: str) -> list[object]:
        outcome: list[object] = []

        def target() -> None:
            try:
                outcome.append(call())
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=target, daemon=True)
        worker.start()
        worker.join(timeout)
        assert not worker.is_alive(), deadlock
        return outcome

    return run


@pytest.fixture(scope="session")
def plot_under_svg_backend() -> Callable[[str, Path], list[str]]:
    """Run a plotting ``script`` (argv[1]: the image to write) in a fresh interpreter whose host
    chose the svg backend; the words it printed. A library switching the host's matplotlib
    backend (an interactive one, a notebook's) changed it under the host's own figures."""

    def run(script: str, out: Path) -> list[str]:
        env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": str(REPO)}
        done = subprocess.run(
            [sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    return run


@pytest.fixture
def float64_default() -> Iterator[None]:
    """``torch.set_default_dtype(torch.float64)``, as robotics and optimisation code sets it,
    for one test."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@pytest.fixture(scope="session", autouse=True)
def _private_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests (and the processes they start) never touch the checkout's engines/ or calibration/."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RTSEG_ENGINE_DIR", str(tmp_path_factory.mktemp("default-engines")))
        mp.setenv("RTSEG_CALIBRATION_DIR", str(tmp_path_factory.mktemp("default-calibration")))
        yield


@pytest.fixture(scope="session")
def exits_cleanly() -> Callable[..., None]:
    """Run Python ``code`` with ``args`` in a fresh interpreter from the repository root; it must
    exit with status 0, with no traceback and no "Exception ignored" (a finalizer that failed at
    exit)."""

    def run(code: str, *args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert done.returncode == 0 and "Traceback" not in done.stderr and "ignored" not in done.stderr, (
            done.stderr
        )

    return run


@pytest.fixture(scope="session")
def serve_process_args() -> Callable[..., tuple[list[str], dict[str, str]]]:
    """(argv, env) for `rtseg serve` in a subprocess: ``weights`` at 64x48 on ``endpoint``."""

    def args(weights: Path, endpoint: str, *extra: str) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "rtseg", "serve", "--weights", str(weights), "--size", "64x48"]
        return [*argv, "--bind", endpoint, *extra], {**os.environ, "PYTHONPATH": str(REPO)}

    return args


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """For modules of tiny inputs: a second intra-op thread only adds barriers (100x slower on a busy
    2-core machine). Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Terminal(io.StringIO):
    """A stderr that says it is an interactive terminal and keeps what is written to it."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(params=[False, True], ids=["stderr-a-file", "stderr-a-terminal"])
def stderr_terminal(request: pytest.FixtureRequest) -> io.StringIO:
    """A stream that is a file (not a terminal), then one that says it is a terminal, for the test
    to make sys.stderr in its body (pytest's capture replaces sys.stderr from setup to the call)
    and read back. Progress bars and status lines belong on a terminal only: a log keeps every
    redraw."""
    return _Terminal() if request.param else io.StringIO()


@pytest.fixture
def sigint_delivered() -> Iterator[None]:
    """For tests that press Ctrl-C (SIGINT to this process or to a child): SIGINT raises
    KeyboardInterrupt here, as in an interactive shell, for the test's duration. Started with
    SIGINT ignored (nohup, a script's background job, ``trap "" INT``), pytest ignored the test's
    own Ctrl-C and passed the ignored signal on to every child it started: those tests failed or
    hung. A child inherits an ignored signal but not a handler, so it starts with SIGINT at its
    default. Use with ``@pytest.mark.usefixtures("sigint_delivered")``."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


def data_dir() -> Path:
    return Path(os.environ.get("RTSEG_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = data_dir()
    if not (root / "weights").is_dir():
        pytest.skip(f"real weights and datasets not found in {root} (set RTSEG_DATA to ../shared/data)")
    return root


@pytest.fixture(scope="session")
def camvid_root(data_root: Path) -> Path:
    root = data_root / "camvid"
    if not (root / "test").is_dir():
        pytest.skip(f"CamVid not found in {root}")
    return root


@pytest.fixture(scope="session")
def espnet_camvid_weights(data_root: Path) -> Path:
    path = data_root / "weights" / "espnet" / "decoder" / "espnet_p_2_q_8_camvid.pth"
    if not path.is_file():
        pytest.skip(f"ESPNet CamVid checkpoint not found at {path}")
    return path


@pytest.fixture
def python310(monkeypatch: pytest.MonkeyPatch) -> Callable[[type[BaseException]], None]:
    """Exceptions as on Python 3.10 (rtseg supports it): rtseg.errors takes it that there is no
    add_note; the returned function takes add_note away from an exception class (a subclass of
    a built-in one: those cannot be changed) so that code calling it fails as on 3.10."""
    import rtseg.errors

    monkeypatch.setattr(rtseg.errors, "NATIVE_NOTES", False, raising=False)

    def missing(self: BaseException) -> None:
        raise AttributeError(f"{type(self).__name__!r} object has no attribute 'add_note'")

    def without_add_note(cls: type[BaseException]) -> None:
        monkeypatch.setattr(cls, "add_note", property(missing), raising=False)

    return without_add_note
