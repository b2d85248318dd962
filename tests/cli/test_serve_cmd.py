"""`rtseg serve` as a process: it serves, reports, stops cleanly on SIGTERM, and refuses bad options."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zmq

from rtseg.cli import main, serve_cmd
from rtseg.errors import ConfigError
from rtseg.models import get_model, save_checkpoint
from rtseg.stream import Client, Server, ServerLimits
from rtseg.stream.protocol import MAX_HEADER_BYTES
from rtseg.stream.server import MIN_MAX_BYTES

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ESPNet with random weights in rtseg's checkpoint format: a real model file, no dataset needed."""
    path = tmp_path_factory.mktemp("weights") / "espnet_random.pt"
    net = get_model("espnet")
    save_checkpoint(path, net.state_dict(), net.meta)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_and_stops_on_sigterm(random_weights: Path, serve_process_args) -> None:  # type: ignore[no-untyped-def]
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    cmd, env = serve_process_args(random_weights, endpoint, "--scheduler", "clockwork", "--interval", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert f"on {endpoint}" in banner and "espnet" in banner and "input 64x48" in banner, banner
        image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        with Client(endpoint, timeout=10) as client:
            replies = [client.segment(image, stream_id="cli") for _ in range(3)]
            assert [r.is_keyframe for r in replies] == [True, False, True]
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert "3 requests, 3 ok, errors: none" in err


def test_a_sigterm_while_the_model_loads_is_a_clean_stop(
    monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The handlers came after the load: a service manager's stop during an engine build killed it
    # with no word (status 143).
    import os
    import time

    def load_model(model, weights):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the build goes on until the signal is handled
        raise AssertionError("not stopped")

    monkeypatch.setattr(serve_cmd, "load_model", load_model)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["serve", "--model", "espnet"]) == 0
    assert capsys.readouterr().err.strip() == "rtseg serve: stopped (SIGTERM) while loading the model"
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--scheduler", "every", "--interval", "3"], "--interval applies to the clockwork scheduler"),
        # make_scheduler's keywords, as rtseg run names them: flags, not max_interval or warp=True
        (["--scheduler", "adaptive", "--max-interval", "0"], "error: --max-interval must be >= 1, got 0"),
        (["--scheduler", "every", "--warp"], "error: --warp (the flow warp) needs cached deep features"),
        # make_scheduler's "the adaptive and async schedulers": serve has no async
        (
            ["--scheduler", "clockwork", "--threshold", "0.1"],
            "error: --threshold applies only to --scheduler adaptive, not clockwork",
        ),
        (
            ["--max-interval", "0", "--threshold", "0"],
            "error: --threshold and --max-interval apply only to --scheduler adaptive, not clockwork",
        ),
        # the flags serve shares with run since it declares them alike
        (
            ["--target-keyframe-rate", "0.2", "--change", "flow"],
            "error: --target-keyframe-rate and --change apply only to --scheduler adaptive, not clockwork",
        ),
        (
            ["--scheduler", "adaptive", "--threshold", "0.1", "--target-keyframe-rate", "0.2"],
            "error: give either --threshold or --target-keyframe-rate, not both",
        ),
        (["--no-warp", "--flow-stride", "8"], "error: --flow-stride applies to the flow warp"),
        (
            ["--scheduler", "adaptive", "--no-warp", "--change", "flow"],
            "error: --change flow (the flow residual) needs the flow warp, which --no-warp turns off",
        ),
        (
            ["--calibration", "l.txt", "--precision", "fp16"],
            "error: --calibration applies to int8 engines (--precision int8), not --precision fp16",
        ),
    ],
)
def test_bad_options_are_refused_before_loading(
    option: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--model", "espnet", *option]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--bind", "tcp://127.0.0.1:99999"], "the port must be in 1..65535"),
        (["--bind", "127.0.0.1:5560"], "expected TRANSPORT://ADDRESS"),
        (["--workers", "0"], "--workers: expected a whole number >= 1, got 0"),
        # the limits name the flag, not the ServerLimits field they fill
        (["--queue", "0"], "argument --queue: expected a whole number >= 1, got 0"),
        (["--max-pixels", "0"], "argument --max-pixels: expected a whole number >= 1, got 0"),
        (["--max-streams", "0"], "argument --max-streams: expected a whole number >= 1, got 0"),
        (["--drain", "-1"], "argument --drain: expected a finite number of seconds >= 0, got -1"),
        (["--drain", "inf"], "argument --drain: expected a finite number of seconds >= 0, got inf"),
        # libzmq drops every frame over it (ZMQ_MAXMSGSIZE): such a server answered nothing
        (
            ["--max-bytes", "10"],
            f"argument --max-bytes: expected a whole number of bytes in {MIN_MAX_BYTES}..2**63-1 (at "
            f"least a header of up to {MAX_HEADER_BYTES} bytes plus a small image), got 10",
        ),
        # ZMQ_MAXMSGSIZE is an int64: setting it raised OverflowError once the model had loaded
        (
            ["--max-bytes", "99999999999999999999"],
            f"argument --max-bytes: expected a whole number of bytes in {MIN_MAX_BYTES}..2**63-1",
        ),
        (["--max-bytes", str(2**63)], f"got {2**63}"),
        (
            ["--curve-keys", "/nonexistent/keys"],
            "CurveZMQ key file not found: /nonexistent/keys/server.key_secret",
        ),
    ],
)
def test_bad_endpoint_and_workers_are_refused_before_loading(
    option: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Loading (and auto's backend timing) takes seconds to a minute: a typo must not wait for it."""

    def no_loading(*args: object) -> None:
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(serve_cmd, "load_model", no_loading)
    try:
        code = main(["serve", "--model", "espnet", *option])
    except SystemExit as exc:  # argparse refuses a bad --workers itself
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_busy_port_is_a_clean_error(random_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    ctx = zmq.Context()
    taken = ctx.socket(zmq.ROUTER)
    try:
        taken.bind(endpoint)
        code = main(["serve", "--weights", str(random_weights), "--size", "64x48", "--bind", endpoint])
    finally:
        taken.close(linger=0)
        ctx.term()
    assert code == 2
    assert f"cannot serve on {endpoint}" in capsys.readouterr().err


def test_stream_ttl_and_drain_options_reach_the_server(
    random_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ServerLimits] = []

    def serve_forever(self: Server) -> None:
        seen.append(self.limits)
        self.close()

    monkeypatch.setattr(Server, "serve_forever", serve_forever)
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    argv = [
        "serve",
        "--weights",
        str(random_weights),
        "--size",
        "64x48",
        "--backend",
        "torch",
        "--bind",
        endpoint,
    ]
    assert main([*argv, "--stream-ttl", "2.5", "--max-streams", "3", "--drain", "0.5"]) == 0
    assert seen[0].stream_ttl_s == 2.5 and seen[0].max_streams == 3 and seen[0].drain_s == 0.5


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            ["--scheduler", "adaptive", "--target-keyframe-rate", "0.25", "--change", "features"],
            {"name": "adaptive", "target_keyframe_rate": 0.25, "change": "features", "threshold": None},
        ),
        (["--flow-stride", "2"], {"name": "clockwork", "interval": 4, "warp.stride": 2}),
        (["--scheduler", "adaptive", "--max-interval", "6"], {"change": "flow", "max_interval": 6}),
    ],
)
def test_scheduling_options_reach_each_streams_scheduler(
    options: list[str], expected: dict, random_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve lacked run's --target-keyframe-rate, --flow-stride and --change; the Server makes each
    stream's scheduler with the factory it is given, so that factory must carry them."""
    factories: list = []

    class Recording(Server):
        def __init__(self, engine, **kwargs) -> None:  # type: ignore[no-untyped-def]
            factories.append(kwargs["scheduler"])
            super().__init__(engine, **kwargs)

        def serve_forever(self) -> None:
            self.close()

    monkeypatch.setattr(serve_cmd, "Server", Recording)
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    argv = ["serve", "--weights", str(random_weights), "--size", "64x48", "--backend", "torch"]
    assert main([*argv, "--bind", endpoint, *options]) == 0
    first, second = factories[0](), factories[0]()
    assert first is not second  # one per stream: each caches its own stream's features
    for name, value in expected.items():
        owner, _, attribute = name.rpartition(".")
        assert getattr(getattr(first, owner) if owner else first, attribute) == value, name


def test_a_scheduler_the_engine_cannot_run_is_refused_naming_the_flags(
    random_weights: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked as `rtseg run` does: not in make_scheduler's keywords (flow_stride), and (the size is
    known from --size or the weights) before the engine loads, not after."""

    def no_load(*args, **kwargs):
        raise AssertionError("the engine was loaded before --flow-stride was checked")

    monkeypatch.setattr(serve_cmd, "load", no_load)
    argv = ["serve", "--weights", str(random_weights), "--backend", "torch"]
    bind = ["--bind", f"tcp://127.0.0.1:{_free_port()}"]
    assert main([*argv, "--size", "64x48", *bind, "--flow-stride", "8"]) == 2
    err = capsys.readouterr().err
    assert "error: --flow-stride 8 leaves a 8x6 flow image at input 64x48" in err
    assert "or turn the warp off (--no-warp)" in err
    assert main([*argv, *bind, "--flow-stride", "100"]) == 2  # the size stored with the weights
    assert "error: --flow-stride 100 leaves a 10x5 flow image at input 1024x512" in capsys.readouterr().err


@pytest.mark.usefixtures("sigint_delivered")
def test_ctrl_c_stops_with_status_130(random_weights: Path, serve_process_args) -> None:  # type: ignore[no-untyped-def]
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    cmd, env = serve_process_args(random_weights, endpoint, "--backend", "torch")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and f"on {endpoint}" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130, err
    assert "rtseg serve: stopped; 0 requests" in err


def test_device_calibration_and_engine_dir_reach_the_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As eval, export and run take them (serve had --device only: no engine cache or int8 list)."""
    seen: dict = {}

    def load(model, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(kwargs)
        raise ConfigError("recorded")

    monkeypatch.setattr(serve_cmd, "load_model", lambda model, weights: None)
    monkeypatch.setattr(serve_cmd, "load", load)
    argv = ["serve", "--device", "cuda:1", "--precision", "int8", "--calibration", str(tmp_path / "l.txt")]
    assert main([*argv, "--engine-dir", str(tmp_path / "e")]) == 2
    assert "recorded" in capsys.readouterr().err
    assert seen["device"] == "cuda:1" and seen["calibration"] == tmp_path / "l.txt"
    assert seen["engine_dir"] == tmp_path / "e"


def test_bind_takes_the_zmq_prefix_as_view_and_the_server_do(
    random_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server, Publisher, Subscriber and Client take zmq://tcp://...; serve's own check of --bind
    refused it before the Server saw it."""
    bound: list[str] = []

    def serve_forever(self: Server) -> None:
        bound.append(self.endpoint)
        self.close()

    monkeypatch.setattr(Server, "serve_forever", serve_forever)
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    argv = ["serve", "--weights", str(random_weights), "--size", "64x48", "--backend", "torch"]
    assert main([*argv, "--bind", f"zmq://{endpoint}"]) == 0
    assert bound == [endpoint]


def test_a_bind_error_names_the_path_as_given(
    random_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Building the Server under the scheduler-flag rewrite turned 'interval' in an ipc path into
    '--interval' in the bind error."""
    endpoint = f"ipc://{tmp_path}/missing/interval/threshold.sock"
    argv = ["serve", "--weights", str(random_weights), "--size", "64x48", "--backend", "torch"]
    assert main([*argv, "--bind", endpoint]) == 2
    assert endpoint in capsys.readouterr().err
