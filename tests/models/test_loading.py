"""rtseg.models.loading: a network from a model name and/or a weights file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rtseg.models import model_name_for


@pytest.mark.data
def test_weights_alone_name_the_model_of_a_resaved_release(
    espnet_camvid_weights: Path, tmp_path: Path
) -> None:
    # `rtseg run --weights copy.pth` without --model: a re-saved copy of an authors' file was "a
    # plain state dict rtseg does not recognise", though it loads as the release with --model.
    state = torch.load(espnet_camvid_weights, map_location="cpu", weights_only=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, copy := tmp_path / "copy.pth")
    assert model_name_for(copy) == "espnet"
