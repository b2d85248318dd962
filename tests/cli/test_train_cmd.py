"""`rtseg train` argument errors: refused at once, before hours of training, as one line."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from rtseg.cli import main


def _train(tmp_path: Path, *extra: str) -> list[str]:
    root = tmp_path / "no-dataset-needed"  # every case is refused before the dataset is opened
    return ["train", "--model", "espnet", "--dataset", "camvid", "--root", str(root), *extra]


def test_an_unwritable_out_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], unusable_output: Callable[[str], Path]
) -> None:
    out = unusable_output("best.pt")
    assert main(_train(tmp_path, "--out", str(out))) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rtseg train: error: --out {out}") and len(err.strip().splitlines()) == 1
    assert (tmp_path / "blocker").read_text() == "keep"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-minutes", "0", "expected a finite number > 0, got 0"),  # was: no time limit at all
        ("--max-minutes", "-1", "expected a finite number > 0, got -1"),  # was: stop after one batch
        ("--threads", "0", "expected a whole number >= 1, got 0"),  # was: silently ignored
        ("--threads", "-2", "expected a whole number >= 1, got -2"),  # was: a RuntimeError traceback
    ],
)
def test_limits_must_be_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(_train(tmp_path, option, value))
    assert exit_.value.code == 2
    assert f"argument {option}: {message}" in capsys.readouterr().err


def test_a_bad_resume_file_is_refused_before_the_dataset_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "run.state.pt"
    state.write_bytes(b"not a state")
    assert main(_train(tmp_path, "--out", str(tmp_path / "run.pt"), "--resume", str(state))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rtseg train: error: {state} is not an rtseg training state")
    assert (
        main(_train(tmp_path, "--out", str(tmp_path / "run.pt"), "--resume", str(tmp_path / "gone.pt"))) == 2
    )
    assert "resume state not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--lr", "nan", "lr (--lr) must be a finite number > 0, got nan"),  # was: a torch traceback
        ("--lr", "inf", "lr (--lr) must be a finite number > 0, got inf"),  # was: "trained"
        ("--weight-decay", "-1", "weight_decay (--weight-decay) must be a finite number >= 0, got -1"),
        ("--weight-decay", "nan", "weight_decay (--weight-decay) must be a finite number >= 0, got nan"),
        ("--class-weight-c", "nan", "class_weight_c (--class-weight-c) must be a finite number > 1"),
        ("--class-weight-c", "inf", "class_weight_c (--class-weight-c) must be a finite number > 1"),
        (
            "--save-every",
            "nan",
            "save_every_s (--save-every) must be a finite number >= 0",
        ),  # was: never saved
    ],
)
def test_non_finite_rates_and_intervals_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    assert main(_train(tmp_path, "--out", str(tmp_path / "best.pt"), option, value)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rtseg train: error: {message}") and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(
    not (Path("/proc/self").is_dir() and os.access("/proc", os.W_OK | os.X_OK)),
    reason="needs Linux's /proc looking writable (as for root) yet refusing new folders",
)
def test_an_out_folder_that_cannot_be_made_is_refused_before_the_dataset_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It passed check_output (/proc is a writable-looking folder for root) and failed after an epoch."""
    assert main(_train(tmp_path, "--out", "/proc/rtseg-no-such/best.pt")) == 2
    err = capsys.readouterr().err
    assert err.startswith("rtseg train: error: --out /proc/rtseg-no-such/best.pt: cannot write in /proc")


def test_an_earlier_run_in_out_is_refused_without_resume_or_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Arrow-up + Enter after a Ctrl-C (the command without --resume) replaced the earlier run's
    state and best weights without a word."""
    out, state = tmp_path / "best.pt", tmp_path / "best.state.pt"
    out.write_bytes(b"earlier weights")
    state.write_bytes(b"earlier state")
    assert main(_train(tmp_path, "--out", str(out))) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"rtseg train: error: out (--out) {out}: an earlier run left {state} and {out}; pass --resume "
        f"{state} to continue that run, or --overwrite to start afresh (which deletes them)"
    )
    state.unlink()
    assert main(_train(tmp_path, "--out", str(out))) == 2
    assert "left " + str(out) + "; pass --overwrite to start afresh" in capsys.readouterr().err
    assert out.read_bytes() == b"earlier weights"


def test_out_over_the_init_checkpoint_is_refused_even_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--init X --out X --overwrite deleted X, the weights the run was to start from, as 'an
    earlier run's'."""
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"the checkpoint to fine-tune")
    argv = _train(tmp_path, "--init", str(weights), "--out", str(weights), "--overwrite")
    assert main(argv) == 2
    assert f"{weights} is the --init checkpoint" in capsys.readouterr().err
    assert weights.read_bytes() == b"the checkpoint to fine-tune"


def test_overwrite_and_resume_together_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "best.state.pt"
    argv = _train(tmp_path, "--out", str(tmp_path / "best.pt"), "--resume", str(state), "--overwrite")
    assert main(argv) == 2
    assert "--overwrite starts a new run and --resume continues one" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("model", "size", "message"),
    [
        (
            "icnet-r50",
            None,
            "icnet-r50 needs an input size divisible by 32, got 480x360 (the default --size); the "
            "nearest sizes it takes are 480x352 and 480x384: pass one with --size WxH",
        ),
        (
            "espnetv2",
            "500x300",
            "espnetv2 needs an input size divisible by 16, got 500x300; the nearest sizes it takes "
            "are 496x288 and 512x304: pass one with --size WxH",
        ),
    ],
)
def test_a_size_the_model_cannot_take_is_refused_before_the_dataset_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, size: str | None, message: str
) -> None:
    """icnet-r50 with the default --size 480x360 was refused after ~8 s of dataset statistics (the
    --root here does not exist: the size error comes first) without saying 480x360 was the default."""
    argv = _train(tmp_path, "--out", str(tmp_path / "out" / "best.pt"), *(["--size", size] if size else []))
    argv[argv.index("--model") + 1] = model
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"rtseg train: error: {message}"
    assert not (tmp_path / "out").exists()
