"""`rtseg export`: the three stage artifacts and sidecars under their documented names
(engines/README.md), reuse on a second run, and one-line errors for what cannot be built here."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from rtseg.cli import main
from rtseg.engine.cache import weights_hash
from rtseg.models import get_model, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STAGES = ("low", "deep", "head")
REPO = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never write into the checkout's engines/ or calibration/."""
    monkeypatch.setenv("RTSEG_ENGINE_DIR", str(tmp_path / "default-engines"))
    monkeypatch.setenv("RTSEG_CALIBRATION_DIR", str(tmp_path / "default-calibration"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = get_model("espnet", num_classes=11)
    path = tmp_path_factory.mktemp("w") / "espnet_small.pt"
    save_checkpoint(path, model.state_dict(), model.meta)
    return path


def _export(weights: Path, engine_dir: Path, *extra: str) -> int:
    return main(
        ["export", "--weights", str(weights), "--size", "64x48", "--engine-dir", str(engine_dir), *extra]
    )


def test_onnxruntime_export_writes_three_stages_with_sidecars(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engines = tmp_path / "engines"
    assert _export(weights, engines, "--backend", "onnxruntime") == 0
    out = capsys.readouterr().out
    wh = weights_hash(get_model("espnet", weights=weights))
    stem = f"espnet-{wh}-64x48-fp32-onnx-any-torch{torch.__version__}"
    files = [engines / f"{stem}.{stage}.onnx" for stage in STAGES]
    assert out.splitlines()[0].startswith("espnet 64x48 onnxruntime fp32 on cpu (onnxruntime ")
    built = {}
    for stage, path in zip(STAGES, files, strict=True):
        assert path.is_file() and str(path) in out
        sidecar = json.loads(Path(f"{path}.json").read_text())
        assert sidecar["file"] == path.name and sidecar["stage"] == stage
        assert sidecar["size"] == path.stat().st_size and len(sidecar["sha256"]) == 64
        assert sidecar["key"]["weights"] == wh and sidecar["key"]["input_size"] == [64, 48]
        assert sidecar["classes"]["names"] and sidecar["preprocessing"]["channel_order"] == "BGR"
        assert sidecar["io"]["inputs"] and sidecar["exporter"] in ("torchscript", "dynamo")
        assert {"built_at", "build_seconds", "rtseg_version"} <= set(sidecar)
        built[stage] = sidecar["built_at"]
    names = sorted(p.name for p in engines.iterdir() if not p.name.startswith("."))
    assert names == sorted([*(p.name for p in files), *(f"{p.name}.json" for p in files)])

    # a second run reuses the artifacts (same files, same build time) and can verify them
    mtimes = [p.stat().st_mtime_ns for p in files]
    assert _export(weights, engines, "--backend", "onnxruntime", "--verify") == 0
    out = capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    assert all(f"(built {built[s]})" in out for s in STAGES)
    # Random weights give logits near ties: a few pixels may flip with the CPU's kernels, the
    # logits themselves must match to float precision.
    found = re.search(r"verify: label agreement ([\d.]+) %, .*\(([\d.e+-]+) of the logit range\)", out)
    assert found, out
    assert float(found[1]) >= 99.9 and float(found[2]) < 1e-5


def test_auto_export_measures_and_says_what_it_picked(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engines = tmp_path / "engines"
    assert _export(weights, engines, "--backend", "auto") == 0
    out = capsys.readouterr().out
    assert "  auto: picked " in out
    assert len(list(engines.glob("auto-espnet-*-64x48-fp32-cpu.json"))) == 1


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_export_here_is_a_one_line_error(weights: Path, tmp_path: Path) -> None:
    """Through the real entry point, so log lines or a traceback would show up too."""
    engines = tmp_path / "engines"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "rtseg", "export", "--weights", str(weights), "--size", "64x48"),
            *("--backend", "tensorrt", "--engine-dir", str(engines)),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert re.match(
        r"rtseg export: error: the tensorrt backend needs (an NVIDIA GPU, .* and )?TensorRT: pip ", lines[0]
    )
    assert done.stdout == ""
    assert not engines.exists()  # nothing exported for a backend that cannot run


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_tensorrt_export_without_device_means_cuda(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's `rtseg export --backend tensorrt` gives no --device: that is the GPU (missing here),
    not the 'cpu' TensorRT refuses."""
    tensorrt = types.ModuleType("tensorrt")
    tensorrt.__version__ = "10.3.0"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    assert _export(weights, tmp_path / "engines", "--backend", "tensorrt", "--precision", "fp16") == 2
    err = capsys.readouterr().err
    assert "needs an NVIDIA GPU" in err and "'cpu'" not in err


def test_int8_mode_applies_to_tensorrt_only(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = _export(weights, tmp_path / "engines", "--backend", "onnxruntime", "--int8-mode", "calibrator")
    assert rc == 2
    assert "rtseg export: error: --int8-mode applies to --backend tensorrt" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["auto", "onnxruntime"])
def test_an_unwritable_engine_dir_fails_before_anything_is_built(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    """auto skipped every exporting backend, picked torch and exited 0 with nothing written."""
    blocker = tmp_path / "blocker"
    blocker.write_text("keep")
    rc = _export(weights, blocker / "engines", "--backend", backend)
    err = capsys.readouterr().err
    assert rc == 2
    assert re.search(rf"error: cannot write to the engine cache {re.escape(str(blocker / 'engines'))}: ", err)
    assert "point --engine-dir (or RTSEG_ENGINE_DIR) at a writable folder" in err
    assert blocker.read_text() == "keep"


def test_int8_verify_compares_on_calibration_frames_and_says_so(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On uniform noise (near-tie logits) an int8 ESPNet that agrees 97-98 % with fp32 on real
    frames was reported at 76.8 % agreement, with nothing to say that the frame was noise."""
    import cv2
    import numpy as np

    from rtseg.engine import CalibrationList

    (tmp_path / "frames").mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        image = np.zeros((48, 64, 3), np.uint8)
        image[:24], image[24:] = (200, 180, 160), (90, 90, 90)  # sky over road
        cv2.imwrite(
            str(tmp_path / "frames" / f"f{i}.png"), image + rng.integers(0, 20, image.shape, np.uint8)
        )
    calibration = CalibrationList.from_images(tmp_path / "frames", 2).save(tmp_path / "list.txt")
    engines = tmp_path / "engines"
    int8 = ("--backend", "onnxruntime", "--precision", "int8", "--verify")
    assert _export(weights, engines, *int8, "--calibration", str(calibration)) == 0
    out = capsys.readouterr().out
    where = re.escape(f"on 2 of the 2 calibration frames in {calibration} (f0.png, f1.png)")
    assert re.search(rf"verify: label agreement [\d.]+ %, .* {where}\n", out), out
    assert "note:" not in out
    assert _export(weights, engines, *int8) == 0  # the cached build, with no list at hand
    out = capsys.readouterr().out
    assert re.search(r"verify: label agreement [\d.]+ %, .* on a random frame\n", out), out
    assert "note: label agreement on random noise says little for int8" in out and "--calibration LIST" in out
