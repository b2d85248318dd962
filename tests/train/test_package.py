from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rtseg.errors import CheckpointError
from rtseg.models import get_model
from rtseg.train.package import package


def test_a_plain_state_dict_is_refused_with_what_to_package_instead(tmp_path: Path) -> None:
    weights = tmp_path / "plain.pt"
    torch.save(get_model("espnet").state_dict(), weights)
    with pytest.raises(CheckpointError, match=r"plain\.pt: a plain state dict has no rtseg metadata"):
        package(weights, tmp_path / "out.pt", dataset="camvid", root=tmp_path, splits=["val"])
    assert not (tmp_path / "out.pt").exists()


def test_the_command_says_a_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It printed a traceback (exit status 1) for every error, as no other rtseg command does."""
    from rtseg.train.package import main

    weights = tmp_path / "plain.pt"
    torch.save(get_model("espnet").state_dict(), weights)
    assert main([str(weights), str(tmp_path / "out.pt"), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m rtseg.train.package: error: ") and "plain state dict" in err
    assert len(err.strip().splitlines()) == 1


def test_the_recorded_scores_use_the_weights_own_resizing(tmp_path: Path, monkeypatch) -> None:
    # Weights trained on area-shrunk frames were scored on linear-resized ones: not what run feeds.
    from dataclasses import replace
    from types import SimpleNamespace

    from rtseg.models import save_checkpoint

    model = get_model("espnet", num_classes=11)
    meta = replace(model.meta, preprocessing=replace(model.meta.preprocessing, interpolation="area"))
    save_checkpoint(weights := tmp_path / "best.pt", model.state_dict(), meta)
    seen = []

    def evaluate(logits_fn, samples, **options):
        seen.append(options["interpolation"])
        return SimpleNamespace(scores=SimpleNamespace(miou=0.5, pixel_accuracy=0.9))

    monkeypatch.setattr("rtseg.train.package.evaluate", evaluate)
    monkeypatch.setattr("rtseg.train.package.open_dataset", lambda *args: [])
    package(weights, tmp_path / "out.pt", dataset="camvid", root=tmp_path, splits=["val"])
    assert seen == ["area"]
