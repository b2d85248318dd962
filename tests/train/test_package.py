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
