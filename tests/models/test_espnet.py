"""ESPNet / ESPNet-C: the authors' checkpoints load strictly and unchanged (but for subnormals)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rtseg.models import get_model, save_checkpoint
from rtseg.models.espnet import ESPNet, espnet_c_config_from_state_dict, espnet_config_from_state_dict
from rtseg.models.flops import stage_flops
from rtseg.models.registry import default_meta

pytestmark = pytest.mark.data

DECODERS = ["espnet_p_2_q_3.pth", "espnet_p_2_q_5.pth", "espnet_p_2_q_8.pth", "espnet_p_2_q_8_camvid.pth"]
ENCODERS = ["espnet_p_2_q_3.pth", "espnet_p_2_q_5.pth", "espnet_p_2_q_8.pth"]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("filename", DECODERS)
def test_decoder_checkpoints_load_strictly(data_root: Path, filename: str) -> None:
    path = data_root / "weights" / "espnet" / "decoder" / filename
    state = _state(path)
    model = ESPNet(**espnet_config_from_state_dict(state))
    model.load_state_dict(state, strict=True)
    loaded = get_model("espnet", weights=path)
    camvid = "camvid" in filename
    assert loaded.meta.classes.name == ("camvid" if camvid else "cityscapes")
    assert loaded.meta.num_outputs == (12 if camvid else 20)
    assert loaded.meta.preprocessing.channel_order == "BGR"
    assert loaded.meta.preprocessing.post_scale == pytest.approx(1 / 255)
    assert loaded.meta.preprocessing.input_size == ((480, 360) if camvid else (1024, 512))
    subnormal = 0
    for key, value in state.items():
        # Every weight as stored, except subnormals, which load as 0 (the authors' files have
        # thousands; they slow x86 CPUs down and change no output).
        tiny = torch.finfo(value.dtype).tiny if value.is_floating_point() else 0
        kept = value.abs() >= tiny if value.is_floating_point() else torch.ones_like(value, dtype=torch.bool)
        assert torch.equal(loaded.state_dict()[key][kept], value[kept]), key
        assert not loaded.state_dict()[key][~kept].any(), key
        subnormal += int((value[~kept] != 0).sum())
    assert subnormal > 1000  # all four releases: 5,865 to 18,302


@pytest.mark.parametrize("filename", ENCODERS)
def test_encoder_checkpoints_load_strictly(data_root: Path, filename: str) -> None:
    path = data_root / "weights" / "espnet" / "encoder" / filename
    state = _state(path)
    config = espnet_c_config_from_state_dict(state)
    assert config["q"] == int(filename.split("_q_")[1].split(".")[0])
    model = get_model("espnet-c", weights=path)
    assert model.meta.model == "espnet-c"
    assert model.stage_spec.output_stride == 8


def test_cityscapes_release_reads_level1_conv_camvid_release_reads_concat() -> None:
    assert ESPNet(skip_channels=16).stage_spec.low[-1].name == "l1"
    assert {f.name for f in ESPNet(skip_channels=19).stage_spec.low} == {"l1_cat", "image_s4"}


def test_low_plus_head_is_cheap() -> None:
    flops = stage_flops(ESPNet(num_outputs=20, skip_channels=16), (1024, 512))
    assert flops.per_frame_share < 0.35


def test_selected_outputs_equal_the_original_logits_and_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = ESPNet(num_outputs=20, skip_channels=16).eval()
    indices = [10, 2, 5, 0]
    selected = net.select_outputs(indices).eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(selected(x), net(x)[:, indices])
    config = espnet_config_from_state_dict(selected.state_dict())
    assert config == {"num_outputs": 4, "p": 2, "q": 8, "skip_channels": 16, "width": 20}
    assert "width" not in espnet_config_from_state_dict(net.state_dict())  # the authors' layout
    path = tmp_path / "selected.pt"
    arch = {k: v for k, v in config.items() if k != "num_outputs"}
    save_checkpoint(path, selected.state_dict(), replace(default_meta("espnet", num_classes=4), config=arch))
    again = get_model("espnet", weights=path)
    with torch.no_grad():
        assert torch.equal(again(x), selected(x))


def test_width_and_selection_are_validated() -> None:
    with pytest.raises(ValueError, match="width must be at least num_outputs"):
        ESPNet(num_outputs=12, width=8)
    with pytest.raises(ValueError, match=r"output indices must be in 0\.\.19"):
        ESPNet(num_outputs=20).select_outputs([3, 20])


def test_sizes_the_decoder_cannot_take_are_named() -> None:
    """60x100 used to fail deep in a decoder torch.cat ("Sizes of tensors must match ...")."""
    model = get_model("espnet", num_classes=3)
    with pytest.raises(ValueError, match="ESPNet needs input height and width divisible by 8, got 100x60"):
        model(torch.zeros(1, 3, 60, 100))
    with pytest.raises(ValueError, match=r"expected an Nx3xHxW tensor, got shape \(1, 1, 64, 64\)"):
        model(torch.zeros(1, 1, 64, 64))
