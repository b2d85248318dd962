"""The unguarded int8 speed bench: every stage quantised, four sessions timed per stage."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg.bench.int8_speed import format_markdown, main, measure_model
from rtseg.engine.onnx_export import STAGES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (128, 64)


def _images(folder: Path, n: int = 2) -> Path:
    folder.mkdir()
    w, h = SIZE
    y, x = np.mgrid[0:h, 0:w]
    for i in range(n):
        rng = np.random.default_rng(i)
        base = np.stack([x * 2.0, y * 4.0, (x + y) * 1.3], -1) + rng.normal(0, 20, (h, w, 3))
        cv2.imwrite(str(folder / f"frame{i}.png"), np.clip(base, 0, 255).astype(np.uint8))
    return folder


def test_every_stage_is_quantised_and_timed(tmp_path: Path) -> None:
    result = measure_model(
        "espnet-c",
        SIZE,
        _images(tmp_path / "images"),
        calibration_num=2,
        runs=2,
        warmup=1,
        engine_dir=tmp_path / "engines",
    )
    assert result["model"] == "espnet-c" and result["size"] == list(SIZE)
    assert result["calibration"]["num"] == 2
    assert list(result["stages"]) == list(STAGES)
    for stage, s in result["stages"].items():
        med = s["median_ms"]
        for label in ("ORT fp32", "ORT int8"):
            assert med[label] > 0, (stage, label)
            low, high = s["spread_ms"][label]
            assert 0 < low <= med[label] <= high
        assert s["qdq_nodes"]["QuantizeLinear"] > 0, stage
        assert s["qdq_nodes"]["DequantizeLinear"] > 0, stage
        assert s["quantization"]["scheme"] == "full", stage  # no fallback to fp32, whatever the error
        assert s["ratio"]["onnxruntime"] == pytest.approx(med["ORT fp32"] / med["ORT int8"])
        if "OpenVINO int8" in med:
            assert s["ratio"]["openvino"] == pytest.approx(med["OpenVINO fp32"] / med["OpenVINO int8"])
    total = result["total"]
    expected = sum(s["median_ms"]["ORT int8"] for s in result["stages"].values())
    assert total["median_ms"]["ORT int8"] == pytest.approx(expected)
    assert total["ratio"]["onnxruntime"] == pytest.approx(
        total["median_ms"]["ORT fp32"] / total["median_ms"]["ORT int8"]
    )
    # Nothing but the fp32 graphs is left in the engine cache: the int8 graphs lived in a temp dir.
    assert not [p for p in (tmp_path / "engines").rglob("*int8*")]
    document = {
        "environment": {"timestamp": "now"},
        "hardware": "cpu",
        "command": "python -m rtseg.bench.int8_speed",
        "runs": 2,
        "warmup": 1,
        "results": [result],
    }
    table = format_markdown(document)
    assert "| espnet-c @ 128x64 | low |" in table and "| **total** |" in table


def test_missing_calibration_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-images"
    with pytest.raises(SystemExit, match=re.escape(str(missing))):
        main(["--models", "espnet-c", "--size", "128x64", "--calibration-images", str(missing)])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runs", "0"], "argument --runs: expected a whole number >= 1, got 0"),
        (["--warmup", "-1"], "argument --warmup: expected a whole number >= 0, got -1"),
        (["--calibration-num", "0"], "argument --calibration-num: expected a whole number >= 1, got 0"),
    ],
)
def test_bad_counts_are_refused_when_parsed(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    """Counts were plain ints: --runs 0 failed in a traceback after the models were quantised."""
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--calibration-images", str(tmp_path)])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_an_rtseg_error_is_one_line_as_the_rtseg_command_says_it(tmp_path: Path, monkeypatch, capsys) -> None:
    """An unknown --models name ended, after the calibration images were read, in a traceback."""
    from rtseg.bench import int8_speed
    from rtseg.errors import ConfigError

    def measure(model: str, *args, **kwargs) -> dict:
        raise ConfigError(f"unknown model {model!r}")

    monkeypatch.setattr(int8_speed, "fingerprint", lambda: {"cpu": {}})
    monkeypatch.setattr(int8_speed, "measure_model", measure)
    assert main(["--models", "nosuch", "--calibration-images", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "python -m rtseg.bench.int8_speed: error: unknown model 'nosuch'\n"
