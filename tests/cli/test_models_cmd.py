"""`rtseg models`: the registry table, the authors' published numbers, and FLOP shares."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rtseg import Segmenter
from rtseg.cli import main
from rtseg.engine.graphs import head_low_inputs
from rtseg.models import DEFAULT_MODEL, DEFAULT_WEIGHTS, get_model, get_spec, list_models, save_checkpoint
from rtseg.models.base import StagedSegmenter
from rtseg.models.checkpoint import read_checkpoint
from rtseg.models.flops import StageFlops


def _table(out: str) -> list[str]:
    """The table's lines: a note follows it after a blank line."""
    lines = out.splitlines()
    return lines[: lines.index("")] if "" in lines else lines


def test_every_registered_model_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    lines = _table(capsys.readouterr().out)
    assert lines[0].split()[:3] == ["model", "params", "(M)"]
    assert [line.split()[0] for line in lines[1:]] == list(list_models())


@pytest.mark.parametrize("markdown", [False, True])
def test_the_input_column_is_the_entrys_default_and_frames_are_bgr(
    markdown: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """An "input" column of "1024x512 RGB" read as "give it RGB": RGB frames cost the shipped
    model 15 mIoU without a word. The column is the registry entry's default, and a note says
    frames are BGR and what the shipped weights run at."""
    assert main(["models", *(["--markdown"] if markdown else [])]) == 0
    out = capsys.readouterr().out
    header = _table(out)[0]
    assert "default input" in header and " input " not in header.replace("default input", "")
    note = " ".join(out.split("\n\n", 1)[1].split())
    assert note.startswith(
        "default input: the registry entry's default size (the authors' Cityscapes setting) and "
        "channel order, which a network built without weights carries; rtseg checkpoints and the "
        "authors' catalogued ones carry their own input and run at it."
    )
    assert "Frames are given as HxWx3 uint8 BGR (OpenCV order) for every model" in note
    assert (
        "From RGB (ROS rgb8, PIL, imageio): image[..., ::-1] or cv2.cvtColor(image, cv2.COLOR_RGB2BGR)."
        in note
    )


def test_the_shipped_weights_are_named_with_the_size_they_run_at(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The table gave ESPNet's input as 1024x512 "the size ... the network was trained on" while the
    shipped espnet_camvid.pt runs at 480x360 (rtseg run, Segmenter()). A line names the shipped
    weights and the size their own metadata records."""
    from rtseg.cli import models_cmd

    meta = read_checkpoint(DEFAULT_WEIGHTS).meta
    assert meta is not None and get_spec(DEFAULT_MODEL).default_input_size != meta.preprocessing.input_size
    w, h = meta.preprocessing.input_size
    assert main(["models"]) == 0
    last = " ".join(capsys.readouterr().out.split("\n\n")[-1].split())
    assert last == (
        f"shipped default weights: {DEFAULT_MODEL} rtseg/assets/{DEFAULT_WEIGHTS.name} "
        f"({meta.classes.name}, {len(meta.classes)} classes), which rtseg run and rtseg.Segmenter() "
        f"run at {w}x{h} {meta.preprocessing.channel_order} unless given another input size."
    )
    assert (w, h) == (480, 360)  # what the sentence says Segmenter() runs the shipped weights at
    assert Segmenter(backend="torch").engine.input_size == (w, h)
    # Read from the file, not written down: other shipped weights give their own size.
    other = tmp_path / "rtseg" / "assets" / "other.pt"
    other.parent.mkdir(parents=True)
    save_checkpoint(
        other,
        get_model("espnet").state_dict(),
        replace(meta, preprocessing=meta.preprocessing.with_input_size((256, 192))),
    )
    monkeypatch.setattr(models_cmd, "DEFAULT_WEIGHTS", other)
    assert main(["models"]) == 0
    assert "rtseg/assets/other.pt" in (out := capsys.readouterr().out) and "run at 256x192 BGR" in out


def test_the_head_reads_column_lists_what_the_head_reads(capsys: pytest.CaptureFixture[str]) -> None:
    """It listed every low feature: ENet's s1 (deep's input only), ESPNet's image_s4, and two for
    ESPNet-C, whose head reads none."""
    assert main(["models", "--markdown"]) == 0
    lines = _table(capsys.readouterr().out)
    keys = [k.strip() for k in lines[0].strip("|").split("|")]
    column = {
        row["model"]: row["low -> head reads"]
        for row in (
            dict(zip(keys, (c.strip() for c in line.strip("|").split("|")), strict=True))
            for line in lines[2:]
        )
    }
    assert column["enet"] == "idx1/4" and column["espnet"] == "l1_cat/2" and column["espnetv2"] == "l1/2"
    assert column["espnet-c"] == "none"
    for name in list_models():
        model = get_model(name).eval()
        k = model.stage_spec.input_multiple
        strides = {f.name: f.stride for f in model.stage_spec.low}
        read = head_low_inputs(model, (4 * k, 2 * k))
        assert column[name] == (", ".join(f"{n}/{strides[n]}" for n in read) or "none"), name


def test_published_numbers_come_with_their_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--published", "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| model | dataset | mIoU | at | FPS | hardware | source | note |"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    expected = [(name, r) for name in list_models() for r in get_spec(name).published]
    assert len(rows) == len(expected) > 0
    for row, (name, r) in zip(rows, expected, strict=True):
        assert row[0] == name and row[2] == f"{r.miou:.1f}" and row[6] == r.source and r.source
        assert row[7] == r.note
    # The model zoo's 70.7 is of a MobileNetV2 DeepLabV3+ without ASPP and decoder: rtseg's has both,
    # and the number was shown as its own.
    (deeplab,) = [row for row in rows if row[0] == "deeplabv3plus-mobilenetv2"]
    assert deeplab[2] == "70.7" and "no ASPP and no decoder" in deeplab[7]


def test_flop_shares_add_up(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--flops", "--size", "256x128", "--markdown"]) == 0
    lines = _table(capsys.readouterr().out)
    keys = [k.strip() for k in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        row = dict(zip(keys, (c.strip() for c in line.strip("|").split("|")), strict=True))
        shares = sum(float(row[k]) for k in ("low %", "deep %", "head %"))
        assert shares == pytest.approx(100, abs=0.2), row
        assert float(row["low+head %"]) == pytest.approx(float(row["low %"]) + float(row["head %"]), abs=0.2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--flops", "--size", "100x100"], "needs a size divisible by"),
        (["--flops", "--published"], "--published lists the authors' numbers; --flops measures"),
        (["--size", "64x64"], "--size is the input size of --flops"),  # was ignored
    ],
)
def test_bad_combinations_are_one_line_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rtseg models: error: ") and message in err and len(err.strip().splitlines()) == 1


def test_models_that_cannot_take_the_size_are_skipped(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--size 480x360 failed with "icnet-r18 needs a size divisible by 32" after measuring the
    models before it, though docs/models.md gives the shares at 480x360."""
    from rtseg.cli import models_cmd

    measured: list[str] = []
    real = models_cmd.stage_flops

    def record(model: StagedSegmenter, size: tuple[int, int]) -> StageFlops:
        measured.append(model.meta.model)
        return real(model, size)

    monkeypatch.setattr(models_cmd, "stage_flops", record)
    assert main(["models", "--flops", "--size", "72x40", "--markdown"]) == 0  # multiples of 8 only
    lines = _table(capsys.readouterr().out)
    keys = [k.strip() for k in lines[0].strip("|").split("|")]
    rows = {
        r["model"]: r
        for r in (
            dict(zip(keys, (c.strip() for c in line.strip("|").split("|")), strict=True))
            for line in lines[2:]
        )
    }
    assert list(rows) == list_models()
    multiples = {name: get_model(name).stage_spec.input_multiple for name in list_models()}
    assert (
        measured == [name for name in list_models() if multiples[name] == 8] == ["enet", "espnet", "espnet-c"]
    )
    for name, row in rows.items():
        if multiples[name] == 8:
            assert float(row["GFLOPs"]) > 0 and row["note"] == "", row
        else:
            assert (
                row["GFLOPs"] == "-"
                and row["note"] == f"skipped: needs a size divisible by {multiples[name]}"
            )
