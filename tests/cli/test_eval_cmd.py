"""`rtseg eval` end to end on the real data (REFERENCE.md numbers)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from rtseg.cli import main
from rtseg.models.checkpoint import meta_sha256

pytestmark = pytest.mark.data


def _miou(capsys: pytest.CaptureFixture[str]) -> float:
    return _miou_of(capsys.readouterr().out)


def _miou_of(out: str) -> float:
    last = out.strip().splitlines()[-1]
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
    assert "the weights predict the 11 camvid classes, but cityscapes is labelled with 19 cityscapes" in (
        capsys.readouterr().err
    )


def test_plain_state_dict_is_scored_with_the_datasets_classes(
    camvid_root: Path, espnet_camvid_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fine-tune rtseg does not recognise (another hash) predicts unnamed classes: CamVid names them."""
    import shutil

    import torch

    state = torch.load(espnet_camvid_weights, map_location="cpu", weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 1e-3
    weights = tmp_path / "finetuned.pth"
    torch.save(state, weights)
    root = tmp_path / "camvid"
    for folder in ("val", "valannot"):
        (root / folder).mkdir(parents=True)
        for image in sorted((camvid_root / folder).glob("*.png"))[:2]:
            shutil.copy(image, root / folder / image.name)
    code = main(
        [
            "eval",
            "--model",
            "espnet",
            "--weights",
            str(weights),
            "--dataset",
            "camvid",
            "--root",
            str(root),
            "--split",
            "val",
            "--size",
            "480x360",
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "road" in out and "bicyclist" in out  # per-class IoU under CamVid's names
    assert _miou_of(out) > 0  # (not 69: an unrecognised state dict gets the default normalisation)


# Official Cityscapes ids (cityscapesScripts labels.py): labelId -> trainId for the classes drawn.
_OFFICIAL = {0: 255, 4: 255, 7: 0, 8: 1, 11: 2, 17: 5, 21: 8, 23: 10, 24: 11, 26: 13}


def test_labelids_and_train_ids_give_the_same_confusion_matrix(data_root: Path, tmp_path: Path) -> None:
    """The real mini frame with a labelIds map and the trainIds map made from it by the official
    table: `rtseg eval` must score both identically (the shipped mini files were downsampled
    separately and differ on 77 boundary pixels, so they cannot show this themselves)."""
    import cv2
    import numpy as np

    mini = data_root / "cityscapes_mini"
    stem = "frankfurt_000000_000294"
    image = cv2.imread(str(mini / f"{stem}_leftImg8bit.png"))
    h, w = image.shape[:2]
    ids = np.array(list(_OFFICIAL), np.uint8)
    label_ids = ids[(np.arange(h)[:, None] // 8 + np.arange(w)[None, :] // 16) % len(ids)]
    train_ids = np.vectorize(_OFFICIAL.get)(label_ids).astype(np.uint8)
    matrices = []
    for kind, labels in (("labelIds", label_ids), ("labelTrainIds", train_ids)):
        root = tmp_path / kind
        root.mkdir()
        cv2.imwrite(str(root / f"{stem}_leftImg8bit.png"), image)
        cv2.imwrite(str(root / f"{stem}_gtFine_{kind}.png"), labels)
        out = tmp_path / f"{kind}.json"
        weights = data_root / "weights" / "espnet" / "decoder" / "espnet_p_2_q_8.pth"
        args = ["eval", "--weights", str(weights), "--dataset", "cityscapes", "--root", str(root)]
        assert main([*args, "--split", "val", "--no-progress", "--json", str(out)]) == 0
        matrices.append(json.loads(out.read_text())["confusion_matrix"])
    assert np.asarray(matrices[0]).sum() == (train_ids != 255).sum()
    assert matrices[0] == matrices[1]


def _tiny_camvid(root: Path, count: int = 1) -> Path:
    """A CamVid-layout split of ``count`` 64x48 frames with labels, for fast error-path runs."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for folder in ("test", "testannot"):
        (root / folder).mkdir(parents=True)
    for i in range(count):
        cv2.imwrite(str(root / "test" / f"{i}.png"), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "testannot" / f"{i}.png"), rng.integers(0, 12, (48, 64), dtype=np.uint8))
    return root


def _eval_tiny(root: Path, *extra: str) -> int:
    return main(
        ["eval", "--dataset", "camvid", "--root", str(root), "--size", "64x48", "--no-progress", *extra]
    )


def test_an_unusable_json_path_is_refused_before_the_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], unusable_output: Callable[[str], Path]
) -> None:
    target = unusable_output("report.json")
    assert _eval_tiny(tmp_path / "nowhere", "--json", str(target)) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"rtseg eval: error: --json {target}") and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and (tmp_path / "blocker").read_text() == "keep"


@pytest.mark.parametrize(
    "target", ["the weights", "the calibration list", "a dataset file", "a linked label"]
)
def test_a_json_over_an_input_is_refused_before_the_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    """--json named the --weights checkpoint, the --calibration list or a file of the dataset
    (the split list beside its folders, a label its folder links to) and replaced it by the
    report."""
    from rtseg.models import DEFAULT_WEIGHTS

    root = _tiny_camvid(tmp_path / "camvid")
    (root / "test.txt").write_text("test/0.png testannot/0.png\n")
    weights, calibration = tmp_path / "w.pt", tmp_path / "cal.txt"
    weights.write_bytes(DEFAULT_WEIGHTS.read_bytes())
    calibration.write_text("list")
    elsewhere = tmp_path / "labels" / "0.png"  # the dataset's label is a link to it
    elsewhere.parent.mkdir()
    (root / "testannot" / "0.png").rename(elsewhere)
    (root / "testannot" / "0.png").symlink_to(elsewhere)
    report, message = {
        "the weights": (tmp_path / "." / "w.pt", "an input (--weights)"),
        "the calibration list": (tmp_path / "camvid" / ".." / "cal.txt", "an input (--calibration)"),
        "a dataset file": (root / "test.txt", f"is inside {root}, the --root dataset folder"),
        "a linked label": (elsewhere, "an input (--root)"),
    }[target]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    extra = ["--weights", str(weights), "--calibration", str(calibration), "--json", str(report)]
    assert _eval_tiny(root, *extra) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"rtseg eval: error: --json {report} ") and captured.out == ""
    assert message in captured.err and len(captured.err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_labels_is_refused_for_a_dataset_with_one_kind_of_label_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--labels was ignored for CamVid without a word."""
    assert _eval_tiny(tmp_path / "nowhere", "--labels", "labelIds") == 2
    assert "--labels chooses Cityscapes ground-truth files; camvid has one kind" in capsys.readouterr().err


def test_a_json_write_that_fails_late_keeps_the_printed_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from rtseg.cli import eval_cmd

    def disk_full(path, text) -> None:  # the disk filled up while the split was evaluated
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(eval_cmd, "atomic_write_text", disk_full)
    root = _tiny_camvid(tmp_path / "camvid")
    target = tmp_path / "report.json"
    assert _eval_tiny(root, "--json", str(target)) == 2
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1].startswith("mIoU: ")  # the result is not lost
    err = captured.err.strip()
    assert err.startswith(f"rtseg eval: error: --json: cannot write {target}: ") and "\n" not in err


def test_an_rtseg_checkpoint_without_weights_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its metadata alone used to end in a KeyError traceback."""
    import torch

    from rtseg.models import DEFAULT_WEIGHTS

    checkpoint = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    del checkpoint["state_dict"]
    weights = tmp_path / "meta-only.pt"
    torch.save(checkpoint, weights)
    assert _eval_tiny(tmp_path / "camvid", "--weights", str(weights)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"rtseg eval: error: {weights}: expected a state dict (name -> tensor), got NoneType"


def test_a_checkpoint_for_a_model_this_rtseg_lacks_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from rtseg.models import DEFAULT_WEIGHTS

    checkpoint = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    checkpoint["meta"]["model"] = "segformer-b9"
    checkpoint["meta_sha256"] = meta_sha256(checkpoint["meta"])  # as the rtseg that wrote it would
    weights = tmp_path / "future.pt"
    torch.save(checkpoint, weights)
    assert _eval_tiny(tmp_path / "camvid", "--weights", str(weights)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"rtseg eval: error: {weights} is for model 'segformer-b9', which this rtseg does not have"
    )


@pytest.mark.parametrize(
    "option",
    [
        ["--scheduler", "clockwork"],
        ["--interval", "3"],
        ["--threshold", "0.1"],
        ["--max-interval", "5"],
        ["--target-keyframe-rate", "0.3"],
        ["--warp"],
        ["--no-warp"],
        ["--flow-stride", "8"],
        ["--change", "features"],
        ["--compare-every"],
    ],
)
def test_scheduling_options_without_sequence_are_refused(
    option: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only --scheduler, a true --warp and --compare-every were refused: `--interval 3 --no-warp`
    was accepted and did nothing."""
    assert _eval_tiny(tmp_path / "nowhere", *option) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"rtseg eval: error: {' '.join(option)}: keyframe scheduling applies to a video, and plain "
        "eval runs every image through the full model: add --sequence (the split in file order) "
        "or drop it"
    )


def test_every_scheduling_option_given_without_sequence_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _eval_tiny(tmp_path / "nowhere", "--interval", "3", "--threshold", "0.1", "--no-warp") == 2
    err = capsys.readouterr().err
    assert "error: --interval 3, --threshold 0.1, --no-warp: keyframe scheduling" in err
    assert err.strip().endswith("or drop them")
    # The default scheduler named explicitly schedules nothing: the split is read as usual.
    assert _eval_tiny(tmp_path / "nowhere", "--scheduler", "every") == 2
    assert "CamVid folder" in capsys.readouterr().err


def test_compare_every_with_the_every_scheduler_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--sequence --compare-every` with the default scheduler ran one pass and compared nothing."""
    root = _tiny_camvid(tmp_path / "camvid", 2)
    assert _eval_tiny(root, "--sequence", "--compare-every") == 2
    assert capsys.readouterr().err.strip() == (
        "rtseg eval: error: --compare-every compares a schedule with every frame through the full "
        "model, but --scheduler is every (the default): there is nothing to compare; choose "
        "--scheduler clockwork, adaptive or async"
    )


def test_sequence_refuses_a_flow_stride_too_large_for_the_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--flow-stride 1000 ran a stretched 12x12 flow image, as any stride past 30 at 480x360; it was
    refused after the engine had loaded."""
    from rtseg.cli import eval_cmd

    root = _tiny_camvid(tmp_path / "camvid", 2)
    real = eval_cmd.load_engine_from_args
    loaded = []
    monkeypatch.setattr(eval_cmd, "load_engine_from_args", lambda *a: loaded.append(a) or real(*a))
    assert _eval_tiny(root, "--sequence", "--scheduler", "clockwork", "--flow-stride", "5") == 2
    assert loaded == []
    assert capsys.readouterr().err.strip() == (
        "rtseg eval: error: --flow-stride 5 leaves a 12x9 flow image at input 64x48, and DIS needs both "
        "sides >= 12 px: the largest --flow-stride here is 4, or turn the warp off (--no-warp)"
    )
    assert _eval_tiny(root, "--sequence", "--scheduler", "clockwork", "--flow-stride", "4") == 0


def test_a_sequence_of_void_labels_is_refused_like_plain_eval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--sequence printed `mIoU ... nan`, exited 0 and wrote `"miou": NaN` (not JSON)."""
    import cv2
    import numpy as np

    root = _tiny_camvid(tmp_path / "camvid", 2)
    for label in (root / "testannot").glob("*.png"):
        cv2.imwrite(str(label), np.full((48, 64), 11, np.uint8))  # CamVid's void
    target = tmp_path / "report.json"
    for extra in ([], ["--sequence"]):
        assert _eval_tiny(root, "--json", str(target), *extra) == 2
        err = capsys.readouterr().err
        assert "error: espnet camvid/test" in err and ": no labelled pixel in 2 label maps (all void" in err
    assert not target.exists()


def test_eval_resizes_as_the_weights_preprocessing_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights whose preprocessing says 'area' were scored on bilinear-shrunk images."""
    import cv2
    import numpy as np
    import torch

    from rtseg import evaluate as evaluate_module
    from rtseg.models import DEFAULT_WEIGHTS

    checkpoint = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    checkpoint["meta"]["preprocessing"]["interpolation"] = "area"
    checkpoint["meta_sha256"] = meta_sha256(checkpoint["meta"])  # as the rtseg that wrote it would
    weights = tmp_path / "area.pt"
    torch.save(checkpoint, weights)
    root = tmp_path / "camvid"
    for folder in ("test", "testannot"):
        (root / folder).mkdir(parents=True)
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    cv2.imwrite(str(root / "test" / "0.png"), image)
    cv2.imwrite(str(root / "testannot" / "0.png"), np.zeros((120, 160), np.uint8))
    seen: list[np.ndarray] = []
    real_resize = evaluate_module.resize_to_input

    def spy(*args, **kwargs) -> np.ndarray:
        seen.append(real_resize(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(evaluate_module, "resize_to_input", spy)
    assert _eval_tiny(root, "--weights", str(weights)) == 0  # 160x120 into 64x48
    (x,) = seen
    assert np.array_equal(x, cv2.resize(image, (64, 48), interpolation=cv2.INTER_AREA))
    assert not np.array_equal(x, cv2.resize(image, (64, 48), interpolation=cv2.INTER_LINEAR))


def test_sequence_notes_once_when_labels_are_scored_at_another_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/scheduling.md called --sequence's scoring the reference protocol of plain eval: it
    resizes the scheduler's labels, not the logits, which differs when the sizes differ."""
    root = _tiny_camvid(tmp_path / "camvid", 2)
    assert main(["eval", "--dataset", "camvid", "--root", str(root), "--no-progress", "--sequence"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: --sequence scores the scheduler's 480x360 labels (the engine's output) resized "
        "nearest-neighbour to the 64x48 label maps; plain rtseg eval upsamples the logits bilinearly, "
        "so its mIoU at this input size can differ slightly"
    ]
    assert _eval_tiny(root, "--sequence") == 0  # --size 64x48: the labels' own size
    assert "note:" not in capsys.readouterr().err


def test_sequence_json_names_the_precision_like_plain_eval(tmp_path: Path) -> None:
    """The --sequence report lacked the precision plain eval's report gives."""
    root = _tiny_camvid(tmp_path / "camvid", 2)
    reports = []
    for extra in ([], ["--sequence"]):
        target = tmp_path / f"report{len(reports)}.json"
        assert _eval_tiny(root, "--json", str(target), *extra) == 0
        reports.append(json.loads(target.read_text()))
    assert reports[0]["precision"] == reports[1]["precision"] == "fp32"
    assert reports[1]["scheduler"] == "every" and reports[1]["backend"] == reports[0]["backend"]
