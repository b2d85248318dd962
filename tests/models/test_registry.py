"""Every registry entry's metadata is complete and consistent (the schema test)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from rtseg.data.labels import ClassSet
from rtseg.data.preprocess import Preprocessing
from rtseg.errors import ConfigError, InputTypeError
from rtseg.models import DEFAULT_MODEL, ModelSpec, get_model, get_spec, list_models
from rtseg.models.checkpoint import WeightsMeta

EXPECTED = {
    "enet",
    "icnet-r18",
    "icnet-r50",
    "deeplabv3plus-mobilenetv2",
    "espnet",
    "espnet-c",
    "espnetv2",
}


def test_registry_lists_every_family() -> None:
    assert set(list_models()) == EXPECTED
    assert DEFAULT_MODEL in EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_spec_metadata_schema(name: str) -> None:
    spec = get_spec(name)
    assert isinstance(spec, ModelSpec)
    assert spec.name == name
    assert isinstance(spec.classes, ClassSet) and len(spec.classes) >= 2
    assert len(spec.classes.palette) == len(spec.classes.names)
    assert isinstance(spec.preprocessing, Preprocessing)
    assert spec.channel_order in ("BGR", "RGB")
    w, h = spec.default_input_size
    assert w > 0 and h > 0
    assert spec.paper
    assert spec.void_outputs in (0, 1)
    for result in spec.published:
        assert result.dataset in ("cityscapes", "camvid")
        assert result.split in ("test", "val")
        assert 0 < result.miou < 100
        assert result.source
        assert result.resolution[0] > 0 and result.resolution[1] > 0
        if result.fps is not None:
            assert result.fps > 0 and result.hardware


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_built_model_carries_meta(name: str) -> None:
    model = get_model(name)
    meta = model.meta
    assert isinstance(meta, WeightsMeta)
    assert meta.model == name
    assert meta.num_outputs == model.num_outputs
    assert not model.training
    spec = model.stage_spec
    w, h = spec.input_multiple * 4, spec.input_multiple * 2
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, h, w))
    assert out.shape == (1, meta.num_outputs, h // spec.output_stride, w // spec.output_stride)


def test_num_classes_changes_outputs_and_classes() -> None:
    model = get_model("espnet", num_classes=7)
    assert model.num_outputs == 7
    assert len(model.meta.classes) == 7


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_and_runs_with_two_classes(name: str) -> None:
    """A 2-class ESPNet built and failed on its first forward inside torch ("expected weight to be
    at least 1 at dimension 0"): its decoder width followed the outputs and the ESP modules split
    it five ways into 0-channel convolutions."""
    model = get_model(name, num_classes=2)
    spec = model.stage_spec
    w, h = spec.input_multiple * 4, spec.input_multiple * 2
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, h, w))
    assert out.shape == (1, 2, h // spec.output_stride, w // spec.output_stride)


def test_espnet_decoder_width_is_at_least_five(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """1-4 outputs get a width-5 decoder, which a checkpoint records and loads back; 5 or more keep
    the authors' width = outputs (their 20- and 12-class layouts are unchanged)."""
    from rtseg.models import save_checkpoint
    from rtseg.models.espnet import espnet_config_from_state_dict

    for n in (1, 4):
        model = get_model("espnet", num_classes=n)
        assert model.classifier.weight.shape[:2] == (5, n)  # ConvTranspose: in, out
        assert espnet_config_from_state_dict(model.state_dict())["width"] == 5
    for n in (5, 12, 20):
        state = get_model("espnet", num_classes=n).state_dict()
        assert state["classifier.weight"].shape[:2] == (n, n)
        assert "width" not in espnet_config_from_state_dict(state)
    torch.manual_seed(0)
    model = get_model("espnet", num_classes=2)
    path = save_checkpoint(tmp_path / "two.pt", model.state_dict(), model.meta)
    again = get_model("espnet", weights=path)
    x = torch.rand(1, 3, 48, 64)
    with torch.inference_mode():
        assert torch.equal(again(x), model(x))
    with pytest.raises(ConfigError, match=r"ESPNet\.width must be at least 5 .*, got 4"):
        get_model("espnet", num_classes=2, width=4)


def test_unknown_model_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError, match="unknown model 'segformer'; available: enet"):
        get_spec("segformer")


def test_num_classes_must_be_a_whole_number() -> None:
    # InputTypeError (a TypeError and an RtsegError): a builtin TypeError escaped `except RtsegError`
    with pytest.raises(InputTypeError, match=r"num_classes must be a whole number of classes, got 2\.5"):
        get_model("espnet", num_classes=2.5)
    with pytest.raises(InputTypeError, match=r"num_classes must be a whole number .*got True \(bool\)"):
        get_model("enet", num_classes=True)
    with pytest.raises(InputTypeError, match=r"num_classes must be a whole number .*got '19' \(str\)"):
        get_model("enet", num_classes="19")


@pytest.mark.parametrize("num_classes", [0, -3, 256, 300])
def test_num_classes_out_of_range_is_a_config_error_naming_it(num_classes: int) -> None:
    # was numbered_classes' builtin ValueError, "number of classes must be in 1..255"
    with pytest.raises(ConfigError, match=rf"num_classes must be from 1 to 255 .*got {num_classes}$"):
        get_model("enet", num_classes=num_classes)
    assert len(get_model("enet", num_classes=np.int64(255)).meta.classes) == 255


@pytest.mark.parametrize("weights", [123, {"weight": 0}, b"w.pt"])
def test_weights_must_be_a_path(weights: object) -> None:
    with pytest.raises(
        InputTypeError, match=r"weights must be a checkpoint path \(str or os.PathLike\), got "
    ):
        get_model("espnet", weights=weights)


def test_config_overrides_of_loaded_weights_are_in_the_metadata(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """output_stride changes DeepLabV3+'s graph but no parameter: the engine cache keys on the
    metadata, so an OS8 model given the OS16 engine got a quarter of its labels right."""
    from rtseg.engine.cache import weights_hash
    from rtseg.models import save_checkpoint

    torch.manual_seed(0)
    model = get_model("deeplabv3plus-mobilenetv2")
    path = save_checkpoint(tmp_path / "dl.pt", model.state_dict(), model.meta)
    os16 = get_model("deeplabv3plus-mobilenetv2", weights=path)
    os8 = get_model("deeplabv3plus-mobilenetv2", weights=path, output_stride=8)
    assert os16.meta.config["output_stride"] == 16 and os8.meta.config["output_stride"] == 8
    assert os8.stage_spec.deep[0].stride == 8
    assert weights_hash(os8) != weights_hash(os16)
    assert get_model("deeplabv3plus-mobilenetv2", weights=path, output_stride=16).meta == os16.meta


def test_loading_weights_leaves_the_callers_torch_generator_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The network was built with a random init, then given its weights: a host that seeded torch
    for its own work drew other numbers after rtseg.Segmenter() than without it. Without weights
    the random init is the network, drawn from the caller's generator as torch's own modules do."""
    from rtseg.models import save_checkpoint

    path = save_checkpoint(tmp_path / "espnet.pt", get_model("espnet").state_dict(), get_model("espnet").meta)
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    get_model("espnet", weights=path)
    assert torch.equal(torch.rand(4), expected)
    torch.manual_seed(0)
    first = get_model("espnet").state_dict()
    torch.manual_seed(0)
    assert all(torch.equal(v, first[k]) for k, v in get_model("espnet").state_dict().items())


@pytest.mark.parametrize("name", list_models())
def test_models_are_float32_whatever_the_default_dtype(name: str, float64_default: None) -> None:
    """Under a caller's float64 default the parameters were float64, and rtseg.Segmenter() failed
    in the ONNX export: "Input type (torch.FloatTensor) and weight type (torch.DoubleTensor)"."""
    model = get_model(name)
    tensors = [*model.parameters(), *model.buffers()]
    assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.float32}


def test_a_half_precision_checkpoint_loads_exactly_under_a_float64_default(tmp_path, float64_default) -> None:  # type: ignore[no-untyped-def]
    from rtseg.models import save_checkpoint

    model = get_model("espnet", num_classes=11)
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = save_checkpoint(tmp_path / "half.pt", half, model.meta)
    loaded = get_model("espnet", weights=path).state_dict()
    for key, value in half.items():
        assert loaded[key].dtype == (torch.float32 if value.is_floating_point() else value.dtype)
        assert torch.equal(loaded[key], value.to(loaded[key].dtype)), key


def test_unknown_options_name_the_ones_the_model_takes() -> None:
    with pytest.raises(
        ConfigError, match=r"espnet has no option 'bogus'; it takes p, q, skip_channels, width"
    ):
        get_model("espnet", bogus=1)
    # ICNet's backbone is part of the registry name; it raised "got multiple values" before.
    with pytest.raises(ConfigError, match=r"icnet-r18 has no option 'backbone'; it takes none"):
        get_model("icnet-r18", backbone="resnet50")
    with pytest.raises(ConfigError, match=r"has no option 'num_outputs'.*num_classes="):
        get_model("enet", num_outputs=5)


@pytest.mark.parametrize("name", ["espnet", "espnet-c"])
def test_espnet_depths_are_validated(name: str) -> None:
    """p and q are block counts: a negative one built a network without those blocks, a float failed
    inside torch with "'float' object cannot be interpreted as an integer"."""
    cls = type(get_model(name)).__name__
    with pytest.raises(ConfigError, match=rf"{cls}\.q must be a whole number >= 0, got -1"):
        get_model(name, q=-1)
    with pytest.raises(ConfigError, match=rf"{cls}\.p must be a whole number >= 0, got 2\.5"):
        get_model(name, p=2.5)
    with pytest.raises(ConfigError, match=rf"{cls}\.p must be a whole number >= 0, got True"):
        get_model(name, p=True)


def test_espnet_widths_are_validated() -> None:
    from rtseg.models.espnet import ESPNet, ESPNetC

    with pytest.raises(ConfigError, match=r"ESPNet\.num_outputs must be a whole number >= 1, got 0"):
        ESPNet(num_outputs=0)
    with pytest.raises(ConfigError, match=r"ESPNetC\.num_outputs must be a whole number >= 1, got 0"):
        ESPNetC(num_outputs=0)
    with pytest.raises(ConfigError, match=r"ESPNet\.width must be a whole number >= 1, got 2\.0"):
        ESPNet(width=2.0)
    with pytest.raises(ConfigError, match=r"ESPNet\.skip_channels must be 16 or 19, got 0"):
        ESPNet(skip_channels=0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: get_model("deeplabv3plus-mobilenetv2", output_stride=16.0),
            r"DeepLabV3Plus\.output_stride must be a whole number >= 1, got 16\.0",
        ),
        (
            lambda: get_model("espnet", skip_channels=16.0),
            r"ESPNet\.skip_channels must be a whole number >= 0, got 16\.0",
        ),
        (
            lambda: _builder("enet")(num_outputs=5.0),
            r"ENet\.num_outputs must be a whole number >= 1, got 5\.0",
        ),
        (
            lambda: _builder("icnet-r18")(num_outputs=5.0),
            r"ICNet\.num_outputs must be a whole number >= 1, got 5\.0",
        ),
        (
            lambda: _builder("espnetv2")(num_outputs=20.0),
            r"ESPNetV2\.num_outputs must be a whole number >= 2, got 20\.0",
        ),
        (
            lambda: _builder("deeplabv3plus-mobilenetv2")(num_outputs=True),
            r"DeepLabV3Plus\.num_outputs must be a whole number >= 1, got True",
        ),
    ],
    ids=["deeplab-output-stride", "espnet-skip-channels", "enet", "icnet", "espnetv2", "deeplab-bool"],
)
def test_float_options_are_refused_naming_the_option(build: Callable[[], object], message: str) -> None:
    """16.0 in (8, 16) is True: a float passed the membership checks and failed inside torch
    ("conv2d() received an invalid combination of arguments") without naming the option."""
    with pytest.raises(ConfigError, match=message):
        build()


def _builder(name: str) -> Callable[..., object]:
    return get_spec(name).builder
