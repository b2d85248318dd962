"""`rtseg eval` end to end on the real data (REFERENCE.md numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtseg.cli import main

pytestmark = pytest.mark.data


def _miou(capsys: pytest.CaptureFixture[str]) -> float:
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("mIoU: ")
    return float(last.split()[1])


def test_espnet_camvid_val(
    camvid_root: Path, espnet_camvid_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "val.json"
    code = main(
        [
            "eval",
            "--model",
            "espnet",
            "--weights",
            str(espnet_camvid_weights),
            "--dataset",
            "camvid",
            "--root",
            str(camvid_root),
            "--split",
            "val",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    assert _miou(capsys) == pytest.approx(69.35, abs=0.3)
    report = json.loads(out.read_text())
    assert report["images"] == 101 and len(report["iou"]) == 11


@pytest.mark.slow
def test_espnet_camvid_test(
    camvid_root: Path, espnet_camvid_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "eval",
            "--weights",
            str(espnet_camvid_weights),
            "--dataset",
            "camvid",
            "--root",
            str(camvid_root),
            "--split",
            "test",
            "--no-progress",
        ]
    )
    assert code == 0
    assert _miou(capsys) == pytest.approx(57.26, abs=0.3)


def test_cityscapes_mini_runs_with_both_label_files(
    data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = data_root / "weights" / "espnet" / "decoder" / "espnet_p_2_q_8.pth"
    results = []
    for labels in ("labelTrainIds", "labelIds"):
        code = main(
            [
                "eval",
                "--weights",
                str(weights),
                "--dataset",
                "cityscapes",
                "--labels",
                labels,
                "--root",
                str(data_root / "cityscapes_mini"),
                "--split",
                "val",
                "--no-progress",
            ]
        )
        assert code == 0
        results.append(_miou(capsys))
    assert results[0] > 30
    assert results[0] == pytest.approx(results[1], abs=1.0)


def test_mismatched_dataset_is_a_clear_error(
    data_root: Path, espnet_camvid_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "eval",
            "--weights",
            str(espnet_camvid_weights),
            "--dataset",
            "cityscapes",
            "--root",
            str(data_root / "cityscapes_mini"),
            "--split",
            "val",
            "--no-progress",
        ]
    )
    assert code == 2
    assert "the weights predict camvid classes (11), but cityscapes is labelled with cityscapes (19)" in (
        capsys.readouterr().err
    )
