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
