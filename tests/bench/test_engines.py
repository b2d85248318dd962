"""The engine comparison: BatchNorm priming of random-weight models, and the table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rtseg.bench.engines import format_markdown, prime_batchnorm
from rtseg.errors import ConfigError
from rtseg.models import get_model


def _frames(n: int) -> list[np.ndarray]:
    return [np.random.default_rng(i).integers(0, 256, (64, 128, 3), dtype=np.uint8) for i in range(n)]


def test_priming_sets_running_statistics_and_leaves_eval_mode(one_torch_thread: None) -> None:
    # DeepLab's ASPP image pool ends in a 1x1 map: a batch of one would fail in its BatchNorm.
    torch.manual_seed(0)
    net = get_model("deeplabv3plus-mobilenetv2")
    prime_batchnorm(net, _frames(4), net.meta.preprocessing)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert not net.training
    assert all(bn.momentum == 0.1 for bn in norms)
    assert all(int(bn.num_batches_tracked) == 2 for bn in norms)
    first = norms[0]
    assert not torch.allclose(first.running_mean, torch.zeros_like(first.running_mean))


def test_priming_needs_two_frames() -> None:
    net = get_model("espnet-c")
    with pytest.raises(ConfigError, match="at least 2 frames, got 1"):
        prime_batchnorm(net, _frames(1), net.meta.preprocessing)


def test_the_table_shows_how_far_autos_pick_is_from_the_fastest() -> None:
    def row(picked: str, calibration_num: int = 16) -> dict:
        return {
            "model": "m",
            "size": [64, 32],
            "calibration": {"num": calibration_num, "id": "x"},
            "gflops": 1.0,
            "median_ms": {"torch": 110.0, "ORT fp32": 100.0},
            "notes": {},
            "skipped": {},
            "fastest_fp32": "ORT fp32",
            "auto": {"picked": picked, "note": ""},
        }

    document = {
        "peak_gflops": 50.0,
        "peak_gflops_before_after": [50.0, 49.0],
        "variants": [{"label": "torch"}, {"label": "ORT fp32"}],
        "environment": {"timestamp": "now"},
        "hardware": "cpu",
        "threads": 2,
        "command": "python -m rtseg.bench.engines",
        "runs": 3,
        "warmup": 1,
        "calibration_images": "imgs",
        "results": [row("ORT fp32"), row("torch")],
    }
    lines = [line for line in format_markdown(document).splitlines() if line.startswith("| m @ 64x32 | 1.00")]
    assert lines[0].endswith("| ORT fp32 | ORT fp32 |")
    assert lines[1].endswith("| ORT fp32 | torch (+10.0 % here) |")
    # the header says how many frames calibrated the int8 graphs: those used, not the defaults
    assert "over imgs (16 per model)." in format_markdown(document)
    document["results"] = [row("ORT fp32", 4), {**row("torch", 8), "model": "n"}]
    assert "over imgs (4 per model; 8 for n at 64x32)." in format_markdown(document)


def _no_measuring(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stubs the slow parts of ``main``; returns what it would have done, in order."""
    from rtseg.bench import engines

    done: list[str] = []
    cpu = {"cpu": {"physical_cores": 1}}

    def measure(case, images, **kw) -> dict:
        done.append(f"{case.model} {case.size[0]}x{case.size[1]}")
        return {}

    monkeypatch.setattr(engines, "fingerprint", lambda: cpu)
    monkeypatch.setattr(engines, "hardware_line", lambda env: "cpu")
    monkeypatch.setattr(engines, "matmul_peak", lambda threads: done.append("peak") or 100.0)
    monkeypatch.setattr(engines, "measure_case", measure)
    monkeypatch.setattr(engines, "format_markdown", lambda document: "")
    return done


def test_a_size_without_models_applies_to_every_model(tmp_path, monkeypatch, capsys) -> None:
    """--size alone was ignored: the default cases ran at 1024x512 and 480x360 (35 minutes)."""
    from rtseg.bench.engines import main
    from rtseg.models import list_models

    done = _no_measuring(monkeypatch)
    assert main(["--size", "320x160", "--calibration-images", str(tmp_path)]) == 0
    assert [d for d in done if d != "peak"] == [f"{m} 320x160" for m in list_models()]


def test_the_matmul_peak_runs_on_the_cores_the_process_may_use(tmp_path, monkeypatch) -> None:
    """Pinned to one of two cores (taskset -c 0), the peak and the torch engines after it ran on
    2 threads while ONNX Runtime ran on 1: the comparison was uneven."""
    from rtseg.bench import engines

    _no_measuring(monkeypatch)  # the fingerprint it stubs says 1 physical core
    monkeypatch.setattr(engines, "usable_cores", lambda: 3)
    threads: list[int] = []
    monkeypatch.setattr(engines, "matmul_peak", lambda n: threads.append(n) or 100.0)
    assert engines.main(["--models", "espnet", "--calibration-images", str(tmp_path)]) == 0
    assert threads and set(threads) == {3}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--size", "320"], "argument --size: size must look like 1024x512 (WIDTHxHEIGHT), got '320'"),
        (["--models", "espnet", "--size", "0x160"], "argument --size: size must be positive, got '0x160'"),
        (["--models", "espnet", "nosuch"], "argument --models: invalid choice: 'nosuch' (choose from 'enet'"),
        # counts: --runs 0 built every engine, then ended in a ConfigError traceback
        (["--runs", "0"], "argument --runs: expected a whole number >= 1, got 0"),
        (["--warmup", "-1"], "argument --warmup: expected a whole number >= 0, got -1"),
        (["--calibration-num", "0"], "argument --calibration-num: expected a whole number >= 1, got 0"),
    ],
)
def test_bad_sizes_and_unknown_models_are_refused_before_any_work(
    argv: list[str], message: str, tmp_path, monkeypatch, capsys
) -> None:
    """A bad --size ended in a traceback; an unknown model only after the matmul peak (8 s)."""
    from rtseg.bench.engines import main

    done = _no_measuring(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--calibration-images", str(tmp_path)])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert done == []


def test_an_rtseg_error_is_one_line_as_the_rtseg_command_says_it(tmp_path, monkeypatch, capsys) -> None:
    """An RtsegError out of a measurement (an engine that cannot be built) ended in a traceback."""
    from rtseg.bench import engines
    from rtseg.errors import EngineBuildError, add_note

    _no_measuring(monkeypatch)

    def measure(case, images, **kw) -> dict:
        raise add_note(EngineBuildError("espnet: the export failed"), "see the log above")

    monkeypatch.setattr(engines, "measure_case", measure)
    assert engines.main(["--models", "espnet", "--calibration-images", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "python -m rtseg.bench.engines: error: espnet: the export failed; see the log above\n"


# The `python -m` tools whose --help used the module docstring's first line.
TOOLS = ("rtseg.bench.engines", "rtseg.bench.int8_speed", "rtseg.schedule.sweep", "rtseg.train.package")


def test_the_module_tools_give_help_under_python_OO(tmp_path: Path) -> None:
    """python -OO strips docstrings: __doc__.splitlines() raised AttributeError on None."""
    code = (
        "import importlib\n"
        f"for name in {TOOLS!r}:\n"
        "    try:\n"
        "        importlib.import_module(name).main(['--help'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (name, exc.code)\n"
    )
    repo = Path(__file__).resolve().parent.parent.parent
    done = subprocess.run(
        [sys.executable, "-OO", "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(repo), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("usage: python -m rtseg.") == len(TOOLS)
