from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rtseg.data.labels import CAMVID
from rtseg.errors import CheckpointError, ConfigError
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


def test_the_command_says_an_errors_notes_as_rtseg_does(tmp_path: Path, monkeypatch, capsys) -> None:
    """It printed the message alone: the notes on what else went wrong were lost (rtseg prints them)."""
    from rtseg.errors import DatasetError, add_note
    from rtseg.train import package as packaging

    def fail(*args, **kwargs) -> dict[str, float]:
        raise add_note(DatasetError("camvid val: no images"), "looked in x/val")

    monkeypatch.setattr(packaging, "package", fail)
    assert packaging.main(["a.pt", str(tmp_path / "out.pt"), "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "python -m rtseg.train.package: error: camvid val: no images; looked in x/val\n"
    )


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
    monkeypatch.setattr("rtseg.train.package.open_dataset", lambda *args: _Split())
    package(weights, tmp_path / "out.pt", dataset="camvid", root=tmp_path, splits=["val"])
    assert seen == ["area"]


def _scored(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    """An evaluation that only records that it ran (the real one reads the dataset)."""
    from types import SimpleNamespace

    def evaluate(logits_fn, samples, **options):
        calls.append("evaluated")
        return SimpleNamespace(scores=SimpleNamespace(miou=0.5, pixel_accuracy=0.9))

    monkeypatch.setattr("rtseg.train.package.evaluate", evaluate)
    monkeypatch.setattr("rtseg.train.package.open_dataset", lambda *args: _Split())


class _Split(list):
    """A dataset with no image, labelled with CamVid's classes."""

    classes = CAMVID


def _camvid_weights(tmp_path: Path) -> Path:
    from dataclasses import replace

    from rtseg.models import save_checkpoint

    model = get_model("espnet", num_classes=11)
    save_checkpoint(weights := tmp_path / "best.pt", model.state_dict(), replace(model.meta, classes=CAMVID))
    return weights


def test_an_unwritable_target_is_refused_before_the_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It failed with a raw OSError after the whole evaluation (minutes)."""
    calls: list[str] = []
    _scored(monkeypatch, calls)
    (tmp_path / "blocker").write_text("keep")
    target = tmp_path / "blocker" / "out.pt"
    with pytest.raises(ConfigError, match=r"target .*out.pt: .*blocker is a file, not a folder"):
        package(_camvid_weights(tmp_path), target, dataset="camvid", root=tmp_path, splits=["val"])
    assert calls == []


def test_a_disk_full_when_writing_is_one_line_with_the_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import errno
    import os

    import rtseg.atomic
    from rtseg.train.package import main

    calls: list[str] = []
    _scored(monkeypatch, calls)
    weights = _camvid_weights(tmp_path)

    def full(fd: int, mode: str):
        os.close(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rtseg.atomic.os, "fdopen", full)
    target = tmp_path / "out.pt"
    assert main([str(weights), str(target), "--root", str(tmp_path), "--splits", "val"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"python -m rtseg.train.package: error: target {target}: cannot write it: "
        f"{os.strerror(errno.ENOSPC)} (nothing written; the scores were val mIoU 50.00)\n"
    )
    assert calls == ["evaluated"] and sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_weights_of_other_classes_are_refused_before_scoring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CamVid weights packaged with --dataset cityscapes were scored on unrelated ids and the
    numbers stored as cityscapes metrics (or a raw ValueError where ids >= 11 occurred)."""
    from rtseg.data.labels import CITYSCAPES

    calls: list[str] = []
    _scored(monkeypatch, calls)
    monkeypatch.setattr(
        "rtseg.train.package.open_dataset", lambda *args: type("S", (_Split,), {"classes": CITYSCAPES})()
    )
    target = tmp_path / "out.pt"
    with pytest.raises(
        ConfigError, match=r"the weights predict the 11 camvid classes, but cityscapes is labelled with 19"
    ):
        package(_camvid_weights(tmp_path), target, dataset="cityscapes", root=tmp_path, splits=["val"])
    assert calls == [] and not target.exists()
