"""Bad checkpoints fail with a message that names the file and what mismatched."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rtseg.data.labels import CAMVID
from rtseg.errors import CheckpointError
from rtseg.models import get_model
from rtseg.models.checkpoint import (
    WeightsMeta,
    meta_sha256,
    read_checkpoint,
    save_checkpoint,
    tensors_sha256,
    without_subnormals,
)
from rtseg.models.registry import default_meta


@pytest.fixture()
def rtseg_ckpt(tmp_path: Path) -> Path:
    model = get_model("espnet", num_classes=11)
    meta = WeightsMeta(
        model="espnet",
        config=dict(model.meta.config),
        classes=CAMVID,
        num_outputs=11,
        preprocessing=model.meta.preprocessing,
        provenance={"source": "test"},
    )
    return save_checkpoint(tmp_path / "espnet.pt", model.state_dict(), meta)


def test_round_trip_with_weights_only_load(rtseg_ckpt: Path) -> None:
    raw = torch.load(rtseg_ckpt, weights_only=True)
    assert raw["format"] == "rtseg.checkpoint" and raw["meta"]["classes"]["name"] == "camvid"
    model = get_model("espnet", weights=rtseg_ckpt)
    assert model.meta.classes == CAMVID and model.num_outputs == 11


def test_half_precision_save_loads_as_float32(tmp_path: Path) -> None:
    model = get_model("espnet", num_classes=11)
    meta = default_meta("espnet", num_classes=11)
    path = save_checkpoint(tmp_path / "half.pt", model.state_dict(), meta, half=True)
    assert torch.load(path, weights_only=True)["state_dict"]["classifier.weight"].dtype == torch.float16
    loaded = get_model("espnet", weights=path)
    assert loaded.classifier.weight.dtype == torch.float32


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=f"weights file not found: {path}"):
        get_model("espnet", weights=path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(CheckpointError, match="weights file is empty"):
        read_checkpoint(path)


def test_truncated_file(rtseg_ckpt: Path, tmp_path: Path) -> None:
    data = rtseg_ckpt.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"truncated\.pt: cannot read the checkpoint; the file is truncated"
    ):
        get_model("espnet", weights=path)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.txt: not a PyTorch checkpoint"):
        get_model("espnet", weights=path)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.pt"
    torch.save({"optimizer": torch.optim.SGD}, path)
    with pytest.raises(CheckpointError, match="holds Python objects besides tensors"):
        read_checkpoint(path)


def test_other_architecture(rtseg_ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match=r"holds weights for model 'espnet', not 'enet'"):
        get_model("enet", weights=rtseg_ckpt)


def test_plain_state_dict_of_other_architecture_lists_keys(tmp_path: Path) -> None:
    path = tmp_path / "enet_plain.pt"
    torch.save(get_model("enet").state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        get_model("espnet", weights=path)
    message = str(info.value)
    assert str(path) in message and "does not fit model 'espnet'" in message
    assert "keys missing from the checkpoint, first: ['encoder.level1.conv.weight'" in message
    assert "unexpected keys in the checkpoint, first: ['initial.conv.weight'" in message


def test_wrong_class_count(rtseg_ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match=r"predicts 11 classes \(camvid\), but num_classes=19"):
        get_model("espnet", weights=rtseg_ckpt, num_classes=19)


def test_wrong_shapes_name_expected_and_actual(tmp_path: Path) -> None:
    state = get_model("espnet", num_classes=11).state_dict()
    state["classifier.weight"] = torch.zeros(11, 11, 3, 3)
    path = tmp_path / "shapes.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        get_model("espnet", weights=path)
    assert "classifier.weight: model expects (11, 11, 2, 2), checkpoint has (11, 11, 3, 3)" in str(info.value)


def test_unsupported_format_version(rtseg_ckpt: Path, tmp_path: Path) -> None:
    raw = torch.load(rtseg_ckpt, weights_only=True)
    raw["format_version"] = 99
    path = tmp_path / "future.pt"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="format_version 99 is not supported"):
        get_model("espnet", weights=path)


def test_invalid_metadata(rtseg_ckpt: Path, tmp_path: Path) -> None:
    raw = torch.load(rtseg_ckpt, weights_only=True)
    del raw["meta"]["preprocessing"]
    raw["meta_sha256"] = meta_sha256(raw["meta"])  # written so by a faulty writer, not damaged
    path = tmp_path / "nometa.pt"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="invalid rtseg checkpoint metadata"):
        get_model("espnet", weights=path)


@pytest.mark.data
def test_upstream_checkpoint_for_other_model(data_root: Path) -> None:
    path = data_root / "weights" / "espnet" / "encoder" / "espnet_p_2_q_8.pth"
    with pytest.raises(CheckpointError, match=r"holds 'espnet-c' weights .*, not 'espnet'"):
        get_model("espnet", weights=path)


@pytest.mark.data
def test_upstream_checkpoint_wrong_class_count(espnet_camvid_weights: Path) -> None:
    with pytest.raises(CheckpointError, match=r"predicts 11 classes \(camvid\), but num_classes=19"):
        get_model("espnet", weights=espnet_camvid_weights, num_classes=19)


def test_plain_state_dict_of_another_family_names_the_file(tmp_path: Path) -> None:
    """ESPNetv2's config reader raised its own CheckpointError, without the path or the key lists."""
    path = tmp_path / "espnet_plain.pt"
    torch.save(get_model("espnet", num_classes=11).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        get_model("espnetv2", weights=path)
    message = str(info.value)
    assert str(path) in message and "does not fit model 'espnetv2'" in message
    assert "unexpected keys in the checkpoint, first: ['encoder.level1.conv.weight'" in message


def test_plain_state_dict_of_an_rtseg_network_reads_back_as_built(tmp_path: Path) -> None:
    """torch.save(get_model(...).state_dict()) lost a class: the last output was taken for void."""
    default = tmp_path / "espnet_19.pt"
    torch.save(get_model("espnet").state_dict(), default)
    model = get_model("espnet", weights=default)
    assert model.meta.classes.name == "cityscapes" and model.meta.num_outputs == 19
    five = tmp_path / "espnet_5.pt"
    torch.save(get_model("espnet", num_classes=5).state_dict(), five)
    model = get_model("espnet", weights=five, num_classes=5)
    assert len(model.meta.classes) == 5 and model.meta.num_outputs == 5
    assert len(get_model("espnet", weights=five, num_classes=4).meta.classes) == 4  # 4 + a void output
    with pytest.raises(CheckpointError, match="but num_classes=11 was asked for"):
        get_model("espnet", weights=five, num_classes=11)


def test_a_flipped_bit_in_a_weight_is_caught(rtseg_ckpt: Path, tmp_path: Path) -> None:
    import zipfile

    raw = torch.load(rtseg_ckpt, weights_only=True)
    assert raw["tensors_sha256"] == tensors_sha256(raw["state_dict"])
    # torch.save stores tensor records uncompressed: flip one bit of the largest one in place.
    with zipfile.ZipFile(rtseg_ckpt) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(rtseg_ckpt.read_bytes())
    name_len, extra_len = (
        int.from_bytes(data[record.header_offset + o : record.header_offset + o + 2], "little")
        for o in (26, 28)
    )
    data[record.header_offset + 30 + name_len + extra_len + record.file_size // 2] ^= 0x10
    broken = tmp_path / "bitrot.pt"
    broken.write_bytes(bytes(data))
    torch.load(broken, weights_only=True)  # torch itself does not notice
    with pytest.raises(
        CheckpointError, match=r"bitrot\.pt: the weights do not match the checksum stored with them"
    ):
        get_model("espnet", weights=broken)


def test_changed_metadata_is_caught(rtseg_ckpt: Path, tmp_path: Path) -> None:
    # The tensors' digest leaves the metadata out: a flipped bit in the stored mean (72.39 read
    # as 76.39) loaded silently and shifted every input.
    raw = torch.load(rtseg_ckpt, weights_only=True)
    mean = list(raw["meta"]["preprocessing"]["mean"])
    raw["meta"]["preprocessing"]["mean"] = [mean[0] + 4.0, *mean[1:]]
    torch.save(raw, broken := tmp_path / "meta_rot.pt")
    with pytest.raises(
        CheckpointError, match=r"meta_rot\.pt: the metadata \(classes, preprocessing\) does not"
    ):
        get_model("espnet", weights=broken)


def test_a_checkpoint_without_a_checksum_still_loads(rtseg_ckpt: Path, tmp_path: Path) -> None:
    raw = torch.load(rtseg_ckpt, weights_only=True)
    del raw["tensors_sha256"], raw["meta_sha256"]
    older = tmp_path / "older.pt"
    torch.save(raw, older)
    assert get_model("espnet", weights=older).num_outputs == 11


@pytest.mark.parametrize("name", ["enet", "deeplabv3plus-mobilenetv2"])
def test_plain_state_dict_of_a_family_without_a_config_reader_loads_with_num_classes(
    name: str, tmp_path: Path
) -> None:
    """With no shape reader the output count was always the registry's (19): an 11-class plain
    state dict failed with "predicts 19 classes ... but num_classes=11 was asked for"."""
    torch.manual_seed(0)
    built = get_model(name, num_classes=11)
    path = tmp_path / f"{name}_11.pt"
    torch.save(built.state_dict(), path)
    model = get_model(name, weights=path, num_classes=11)
    assert model.num_outputs == 11 and len(model.meta.classes) == 11
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), built.state_dict().values(), strict=True)
    )
    with pytest.raises(CheckpointError, match=r"shape mismatches"):
        get_model(name, weights=path)  # without num_classes: the registry's 19, which does not fit


def test_subnormal_weights_load_as_zero_with_the_same_outputs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The authors' ESPNet checkpoints hold thousands of subnormal weights, which made torch and
    ONNX Runtime 3-4x slower on x86 (each product with one takes a microcode assist)."""
    torch.manual_seed(0)
    reference = get_model("espnet", num_classes=11)
    state = reference.state_dict()
    tiny = torch.finfo(torch.float32).tiny
    state["encoder.level2.0.c1.conv.weight"][:4] = tiny / 8  # a dead channel's decayed weights
    state["encoder.b2.bn.running_var"][3] = -tiny / 1000
    state["classifier.weight"][0, 0, 0, 0] = tiny  # the smallest normal float stays
    path = tmp_path / "subnormal.pt"
    torch.save(state, path)
    with caplog.at_level("INFO", logger="rtseg.models.registry"):
        model = get_model("espnet", weights=path, num_classes=11)
    loaded = model.state_dict()
    assert float(loaded["encoder.level2.0.c1.conv.weight"][:4].abs().max()) == 0.0
    assert float(loaded["encoder.b2.bn.running_var"][3]) == 0.0
    assert float(loaded["classifier.weight"][0, 0, 0, 0]) == tiny
    expected = 4 * 64 + 1
    assert f"subnormal.pt: {expected} subnormal weights set to 0" in caplog.text
    reference.load_state_dict(state)
    x = torch.randn(1, 3, 64, 128)
    with torch.inference_mode():
        assert torch.equal(model.eval()(x), reference.eval()(x))


def test_float16_values_below_its_normal_range_are_kept() -> None:
    """float16's subnormals (below 6.1e-5) are values networks use, and CPUs convert float16
    before computing: only float32's range is cleaned."""
    half = torch.tensor([3e-5, 1e-7, 0.5], dtype=torch.float16)
    bfloat = torch.tensor([1e-39, 0.5], dtype=torch.bfloat16)
    steps = torch.tensor(7)
    out, count = without_subnormals({"half": half, "bfloat": bfloat, "steps": steps})
    assert count == 1 and torch.equal(out["half"], half) and out["steps"] is steps
    assert out["bfloat"].tolist() == [0.0, 0.5]


def test_a_checkpoint_without_subnormals_loads_unchanged(
    rtseg_ckpt: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="rtseg.models.registry"):
        model = get_model("espnet", weights=rtseg_ckpt)
    assert "subnormal" not in caplog.text
    assert tensors_sha256(model.state_dict()) == tensors_sha256(
        torch.load(rtseg_ckpt, weights_only=True)["state_dict"]
    )


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    """A state dict saved from a diverged run loaded silently and labelled every pixel class 0."""
    state = get_model("espnet", num_classes=11).state_dict()
    state["classifier.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"nan\.pt: 1 tensors hold NaN or infinite values, first: "):
        get_model("espnet", weights=path, num_classes=11)


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("meta", r"invalid rtseg checkpoint: the 'meta' entry is missing or not a dict \(got NoneType\)"),
        ("classes", r"invalid rtseg checkpoint metadata: the key 'classes' is missing"),
    ],
)
def test_a_missing_metadata_key_is_named_as_missing(
    rtseg_ckpt: Path, tmp_path: Path, drop: str, message: str
) -> None:
    """It said only "invalid rtseg checkpoint metadata: 'meta'" (the bare KeyError text)."""
    raw = torch.load(rtseg_ckpt, weights_only=True)
    if drop == "meta":
        del raw["meta"]
    else:
        del raw["meta"][drop]
        raw["meta_sha256"] = meta_sha256(raw["meta"])  # written so by a faulty writer, not damaged
    bad = tmp_path / "bad.pt"
    torch.save(raw, bad)
    with pytest.raises(CheckpointError, match=rf"bad\.pt: {message}"):
        read_checkpoint(bad)


def test_get_model_remembers_the_weights_file(rtseg_ckpt: Path) -> None:
    assert get_model("espnet", weights=rtseg_ckpt).weights_path == rtseg_ckpt
    assert get_model("espnet").weights_path is None


def test_a_training_state_is_not_taken_for_weights(tmp_path: Path) -> None:
    """Its "model" entry was unwrapped as a plain state dict: a warning, numbered classes and
    another model's preprocessing, with labels half wrong."""
    state = tmp_path / "best.state.pt"
    model = get_model("espnet", num_classes=11)
    torch.save({"format": "rtseg.train-state", "format_version": 1, "model": model.state_dict()}, state)
    with pytest.raises(CheckpointError, match=r"best\.state\.pt is a training state .* \(best\.pt\)"):
        read_checkpoint(state)
    with pytest.raises(CheckpointError, match="is a training state"):
        get_model("espnet", weights=state)


def test_numpy_values_in_the_metadata_are_saved_as_python_numbers(tmp_path: Path) -> None:
    """np.int64 in meta.config wrote a file that read_checkpoint refused as holding Python objects."""
    model = get_model("espnet", num_classes=11)
    meta = replace(
        model.meta,
        config={**model.meta.config, "q": np.int64(8), "p": np.int32(2)},
        provenance={"source": "test", "lr": np.float32(0.5), "flag": np.bool_(True)},
        metrics={"camvid/val": {"miou": np.float64(61.25), "per_class": np.arange(3)}},
    )
    path = save_checkpoint(tmp_path / "numpy.pt", model.state_dict(), meta)
    loaded = read_checkpoint(path).meta
    assert loaded is not None and loaded.config["q"] == 8 and type(loaded.config["q"]) is int
    assert type(loaded.provenance["lr"]) is float and loaded.provenance["flag"] is True
    assert loaded.metrics["camvid/val"] == {"miou": 61.25, "per_class": [0, 1, 2]}
    assert get_model("espnet", weights=path).num_outputs == 11


def test_get_model_keeps_numpy_options_as_python_numbers(tmp_path: Path) -> None:
    model = get_model("deeplabv3plus-mobilenetv2", output_stride=np.int64(8))
    assert type(model.meta.config["output_stride"]) is int
    path = save_checkpoint(tmp_path / "os8.pt", model.state_dict(), model.meta)
    assert get_model("deeplabv3plus-mobilenetv2", weights=path).meta.config["output_stride"] == 8


def test_metadata_a_weights_only_load_refuses_is_never_written(tmp_path: Path) -> None:
    model = get_model("espnet", num_classes=11)
    meta = replace(model.meta, provenance={"source": "test", "data": tmp_path})
    path = tmp_path / "path.pt"
    with pytest.raises(
        CheckpointError, match=r"path\.pt: meta\['provenance'\]\['data'\]: expected None.*Path"
    ):
        save_checkpoint(path, model.state_dict(), meta)
    assert not path.exists() and not list(tmp_path.glob(".path.pt.*"))


def test_save_checkpoint_loads_the_payload_before_it_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever slips past the metadata check: a file read_checkpoint refuses is not written."""
    monkeypatch.setattr("rtseg.models.checkpoint.plain_metadata", lambda value, where: value)
    model = get_model("espnet", num_classes=11)
    meta = replace(model.meta, config={**model.meta.config, "q": np.int64(8)})
    path = tmp_path / "np.pt"
    with pytest.raises(CheckpointError, match=r"np\.pt: not written: .* weights_only=True"):
        save_checkpoint(path, model.state_dict(), meta)
    assert not path.exists()


def test_integer_tensors_for_float_weights_are_refused(tmp_path: Path) -> None:
    """They were cast with .to(float32) on load: every weight truncated, without a word."""
    state = get_model("espnet", num_classes=11).state_dict()
    ints = {k: (v * 100).to(torch.int32) if v.is_floating_point() else v for k, v in state.items()}
    floats = sum(v.is_floating_point() for v in state.values())
    path = tmp_path / "int.pt"
    torch.save(ints, path)
    with pytest.raises(CheckpointError) as info:
        get_model("espnet", weights=path, num_classes=11)
    message = str(info.value)
    assert f"{path} does not fit model 'espnet'" in message
    assert f"{floats} tensors of another kind of number (float, integer, bool), first:" in message
    assert "encoder.level1.conv.weight: model expects torch.float32, checkpoint has torch.int32" in message
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(half, path)  # another precision of the same kind is cast, as before
    assert get_model("espnet", weights=path, num_classes=11).classifier.weight.dtype == torch.float32


def test_a_plain_state_dict_read_one_class_short_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """get_model("espnet", num_classes=12), saved plain, read back as 11 classes plus void with
    only the generic "not recognised" warning."""
    path = tmp_path / "espnet_12.pt"
    torch.save(get_model("espnet", num_classes=12).state_dict(), path)
    with caplog.at_level("WARNING", logger="rtseg.models.registry"):
        assert len(get_model("espnet", weights=path).meta.classes) == 11
    assert "last output channel was taken as void (never predicted)" in caplog.text
    assert "11 classes of 12 outputs" in caplog.text and "pass num_classes=12 to get_model" in caplog.text
    assert "docs/models.md, 'A plain state dict'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="rtseg.models.registry"):
        assert len(get_model("espnet", weights=path, num_classes=12).meta.classes) == 12
    assert "is a plain state dict" in caplog.text and "void" not in caplog.text


def test_a_classifier_of_another_size_suggests_num_classes(tmp_path: Path) -> None:
    """An 11-class ENet loaded without num_classes listed only the classifier's shapes."""
    path = tmp_path / "enet_11.pt"
    torch.save(get_model("enet", num_classes=11).state_dict(), path)
    with pytest.raises(
        CheckpointError,
        match=r"only the number of outputs differs \(the checkpoint has 11, the model 19\): "
        r"pass num_classes=11",
    ):
        get_model("enet", weights=path)
    other = tmp_path / "enet_other.pt"
    state = get_model("enet", num_classes=11).state_dict()
    state["initial.conv.weight"] = torch.zeros(1, 3, 3, 3)  # a second kind of mismatch: no hint
    torch.save(state, other)
    with pytest.raises(CheckpointError) as info:
        get_model("enet", weights=other)
    assert "shape mismatches" in str(info.value) and "num_classes" not in str(info.value)


def test_a_zip_of_something_else_is_not_called_corrupt(tmp_path: Path) -> None:
    """An .npz renamed .pth was reported as "truncated or corrupt"."""
    path = tmp_path / "arrays.pth"
    with path.open("wb") as f:
        np.savez(f, weights=np.zeros(3), bias=np.ones(2))
    with pytest.raises(
        CheckpointError,
        match=r"arrays\.pth: a zip archive but not a PyTorch checkpoint .* "
        r"holds 2 members: weights\.npy, bias\.npy\)",
    ):
        read_checkpoint(path)


def test_a_truncated_zip_checkpoint_is_still_called_truncated(rtseg_ckpt: Path, tmp_path: Path) -> None:
    data = rtseg_ckpt.read_bytes()
    for name, cut in (("head.pt", data[:200]), ("most.pt", data[: len(data) - 40])):
        path = tmp_path / name
        path.write_bytes(cut)
        with pytest.raises(CheckpointError, match="the file is truncated or corrupt"):
            read_checkpoint(path)
