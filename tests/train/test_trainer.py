"""Training: a run killed mid-epoch resumes and ends with the same weights as an unbroken run."""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rtseg.data.labels import CAMVID, CITYSCAPES, corresponding_outputs
from rtseg.errors import CheckpointError, ConfigError
from rtseg.models import get_model, save_checkpoint
from rtseg.models.espnet import ESPNet
from rtseg.models.registry import default_meta
from rtseg.train import SavedState, TrainConfig, Trainer, read_state, state_path_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_camvid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 64x48 'road scenes' whose labels follow the pixels, in the CamVid layout."""
    root = tmp_path_factory.mktemp("camvid")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 2)):
        (root / split).mkdir()
        (root / f"{split}annot").mkdir()
        for i in range(count):
            label = np.full((48, 64), 0, np.uint8)  # sky
            label[24:] = 3  # road
            x = int(rng.integers(0, 48))
            label[28:40, x : x + 16] = 8  # a car
            label[0:2] = 11  # void
            palette = np.array(
                [[200, 180, 160], [0, 0, 0], [0, 0, 0], [90, 90, 90]]
                + [[0, 0, 0]] * 4
                + [[30, 30, 200]]
                + [[0, 0, 0]] * 3,
                np.uint8,
            )
            image = palette[np.minimum(label, 11)] + rng.integers(0, 20, (48, 64, 3)).astype(np.uint8)
            cv2.imwrite(str(root / split / f"f{i:03d}.png"), image)
            cv2.imwrite(str(root / f"{split}annot" / f"f{i:03d}.png"), label)
    return root


def _cli(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rtseg",
        "train",
        "--model",
        "espnet",
        "--dataset",
        "camvid",
        "--root",
        str(root),
        "--size",
        "64x48",
        "--epochs",
        "3",
        "--batch",
        "2",
        "--lr",
        "2e-3",
        "--out",
        str(out),
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]


def _progress(state: Path) -> dict:
    return json.loads(torch.load(state, weights_only=True)["progress"])


def test_killed_mid_epoch_resumes_to_identical_weights(tiny_camvid: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    unbroken = tmp_path / "unbroken" / "best.pt"
    subprocess.run(_cli(tiny_camvid, unbroken), check=True, env=env, capture_output=True, timeout=300)

    broken = tmp_path / "broken" / "best.pt"
    state = state_path_for(broken)
    proc = subprocess.Popen(
        _cli(tiny_camvid, broken, "--save-every", "0"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if state.exists():
                p = _progress(state)
                if p["epoch"] == 1 and p["batch"] >= 2:  # in the middle of the second epoch
                    break
            time.sleep(0.05)
        else:
            pytest.fail("training never reached the middle of epoch 2")
        proc.send_signal(signal.SIGKILL)  # no chance to save anything more
    finally:
        proc.wait(timeout=30)
    killed_at = _progress(state)
    assert killed_at["epoch"] < 3
    done = subprocess.run(
        _cli(tiny_camvid, broken, "--resume", str(state)),
        check=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stdout.strip().splitlines()[-1].startswith("done:")
    a = torch.load(state_path_for(unbroken), weights_only=True)["model"]
    b = torch.load(state, weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the epoch cut in two reports the loss of all its batches, as the unbroken run does
    history = [(h["epoch"], h["loss"]) for h in _progress(state)["history"]]
    assert history == [(h["epoch"], h["loss"]) for h in _progress(state_path_for(unbroken))["history"]]
    best = get_model("espnet", weights=broken)
    assert best.meta.classes.name == "camvid"
    assert best.meta.provenance["source"] == "rtseg train"
    assert "camvid/val" in best.meta.metrics


def test_resume_refuses_other_settings(tiny_camvid: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        model="espnet",
        dataset="camvid",
        root=str(tiny_camvid),
        out=str(tmp_path / "a.pt"),
        size=(64, 48),
        epochs=1,
        batch=2,
    )
    trainer = Trainer(config, progress=False)
    trainer.save_state()
    other = Trainer(TrainConfig(**{**config.__dict__, "lr": 1e-2}), progress=False)
    with pytest.raises(ConfigError, match=r"other settings .*'lr': \(0.0005, 0.01\)"):
        other.load_state(trainer.state_path)


def test_config_validation_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"batch \(--batch\) must be positive, got 0"):
        TrainConfig(model="espnet", dataset="camvid", root=".", out="x.pt", batch=0)


@pytest.mark.parametrize("seed", [-1, 2**32, 20_000_000_000_000])
def test_a_seed_the_generators_cannot_take_is_refused_up_front(seed: int) -> None:
    """A negative seed failed in NumPy's generator after set-up; a huge one at the first batch."""
    with pytest.raises(
        ConfigError, match=rf"seed \(--seed\) must be a whole number in 0\.\.4294967295, got {seed}"
    ):
        TrainConfig(model="espnet", dataset="camvid", root=".", out="x.pt", seed=seed)


def test_validation_labels_without_a_labelled_pixel_are_refused_before_training(
    tiny_camvid: Path, tmp_path: Path
) -> None:
    """Found by the first validation, after a whole epoch of training, before."""
    import shutil

    root = tmp_path / "camvid"
    shutil.copytree(tiny_camvid, root)
    for label in (root / "valannot").iterdir():
        void = np.full_like(cv2.imread(str(label), cv2.IMREAD_UNCHANGED), CAMVID.ignore_index)
        cv2.imwrite(str(label), void)
    with pytest.raises(ConfigError, match=r"no labelled pixel in its 2 label maps"):
        Trainer(_config(root, tmp_path / "out.pt"), progress=False)


def _config(root: Path, out: Path, **kw: object) -> TrainConfig:
    return TrainConfig(
        model="espnet", dataset="camvid", root=str(root), out=str(out), size=(64, 48), epochs=1, batch=2, **kw
    )


def test_init_from_another_class_set_selects_corresponding_outputs(tiny_camvid: Path, tmp_path: Path) -> None:
    """CamVid from Cityscapes weights: every tensor is kept and each CamVid output starts as the
    corresponding Cityscapes output, so the run starts from the source network's predictions."""
    torch.manual_seed(1)
    source = ESPNet(num_outputs=20, skip_channels=16)  # the authors' Cityscapes layout: 19 + void
    meta = default_meta("espnet", skip_channels=16)
    init = tmp_path / "city.pt"
    save_checkpoint(init, source.state_dict(), replace(meta, classes=CITYSCAPES, num_outputs=20))
    trainer = Trainer(_config(tiny_camvid, tmp_path / "out.pt", init=str(init)), progress=False)
    indices = corresponding_outputs(CAMVID, CITYSCAPES)
    assert indices is not None and len(indices) == 11
    x = torch.randn(1, 3, 48, 64)
    model = trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), get_model("espnet", weights=init)(x)[:, indices])
    assert model.meta.config["width"] == 20 and model.num_outputs == 11


def test_init_with_the_same_classes_keeps_the_whole_network(tiny_camvid: Path, tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = ESPNet(num_outputs=11, width=20).eval()
    meta = default_meta("espnet", num_classes=11, width=20)
    init = tmp_path / "camvid.pt"
    save_checkpoint(init, source.state_dict(), replace(meta, classes=CAMVID))
    trainer = Trainer(_config(tiny_camvid, tmp_path / "out.pt", init=str(init)), progress=False)
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(trainer.model.eval()(x), source.eval()(x))


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ({"scale_range": (2.0, 0.5)}, r"scale_range must satisfy 0 < MIN <= MAX < inf, got 2 0.5"),
        ({"scale_range": (-1.0, 0.0)}, r"scale_range must satisfy 0 < MIN <= MAX < inf, got -1 0"),
        ({"scale_range": (0.5, math.inf)}, r"scale_range must satisfy 0 < MIN <= MAX < inf, got 0.5 inf"),
        ({"save_every_s": -5.0}, r"save_every_s \(--save-every\) must be a finite number >= 0 .*, got -5"),
        # NaN passed `< 0` and turned periodic saving off (`elapsed >= nan` is never true)
        (
            {"save_every_s": math.nan},
            r"save_every_s \(--save-every\) must be a finite number >= 0 .*, got nan",
        ),
        (
            {"save_every_s": math.inf},
            r"save_every_s \(--save-every\) must be a finite number >= 0 .*, got inf",
        ),
        # NaN was a torch traceback ("Invalid learning rate"); inf "trained" on NaN weights
        ({"lr": math.nan}, r"lr \(--lr\) must be a finite number > 0, got nan"),
        ({"lr": math.inf}, r"lr \(--lr\) must be a finite number > 0, got inf"),
        ({"lr": 0.0}, r"lr \(--lr\) must be a finite number > 0, got 0"),
        # weight decay was never checked: -1 and NaN were torch tracebacks
        ({"weight_decay": -1.0}, r"weight_decay \(--weight-decay\) must be a finite number >= 0, got -1"),
        (
            {"weight_decay": math.nan},
            r"weight_decay \(--weight-decay\) must be a finite number >= 0, got nan",
        ),
        (
            {"weight_decay": math.inf},
            r"weight_decay \(--weight-decay\) must be a finite number >= 0, got inf",
        ),
        ({"momentum": math.nan}, r"momentum must be a finite number >= 0, got nan"),
        ({"poly_power": -1.0}, r"poly_power must be a finite number >= 0, got -1"),
        # NaN and inf passed `c and c <= 1` and ended as "loss became nan ... lower --lr"
        (
            {"class_weight_c": math.nan},
            r"class_weight_c \(--class-weight-c\) must be a finite number > 1 .*got nan",
        ),
        (
            {"class_weight_c": math.inf},
            r"class_weight_c \(--class-weight-c\) must be a finite number > 1 .*got inf",
        ),
        (
            {"class_weight_c": 0.5},
            r"class_weight_c \(--class-weight-c\) must be a finite number > 1 .*got 0.5",
        ),
        ({"device": "gpu"}, r"device must be 'cpu' or 'cuda\[:N\]', got 'gpu'"),
    ],
)
def test_config_validation_of_ranges_and_devices(field: dict, message: str) -> None:
    """Typed errors at once, not a ValueError from the augmentation or a torch error mid-run."""
    with pytest.raises(ConfigError, match=message):
        TrainConfig(model="espnet", dataset="camvid", root=".", out="x.pt", **field)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_cuda_device_is_named() -> None:
    from rtseg.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match=r"device cuda: .*--device cpu"):
        TrainConfig(model="espnet", dataset="camvid", root=".", out="x.pt", device="cuda")


def test_a_size_the_model_cannot_take_is_refused_before_training(tiny_camvid: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="espnet needs an input size divisible by 8, got 60x44; the nearest"
    ):
        Trainer(replace(_config(tiny_camvid, tmp_path / "a.pt"), size=(60, 44)), progress=False)


def test_the_size_check_reads_the_multiple_of_the_init_variant(tiny_camvid: Path, tmp_path: Path) -> None:
    """The size is checked before the data is read, against the network the run trains: DeepLabV3+
    takes 480x360 at output stride 8 (--init weights of that variant), not at its default 16."""
    config = replace(
        _config(tiny_camvid, tmp_path / "a.pt"), model="deeplabv3plus-mobilenetv2", size=(480, 360)
    )
    with pytest.raises(ConfigError, match=r"divisible by 16, got 480x360 \(the default --size\)"):
        Trainer(replace(config, root=str(tmp_path / "missing")), progress=False)
    os8 = get_model("deeplabv3plus-mobilenetv2", output_stride=8)
    init = save_checkpoint(tmp_path / "os8.pt", os8.state_dict(), os8.meta)
    trainer = Trainer(replace(config, init=str(init), class_weight_c=0), progress=False)
    assert trainer.model.stage_spec.input_multiple == 8


def test_unreadable_resume_states_are_named(tiny_camvid: Path, tmp_path: Path) -> None:
    from rtseg.errors import CheckpointError

    trainer = Trainer(_config(tiny_camvid, tmp_path / "a.pt", class_weight_c=0), progress=False)
    trainer.save_state()
    good = trainer.state_path.read_bytes()
    cases = {
        "random.pt": (bytes(range(7, 200)), r"is not an rtseg training state .*starting with bytes"),
        "empty.pt": (b"", r"is not an rtseg training state .*an empty file"),
        "cut.pt": (
            good[: len(good) // 2],
            r"cannot read the training state; the file is truncated or corrupt",
        ),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=message) as caught:
            trainer.load_state(path)
        assert "\n" not in str(caught.value) and "weights_only" not in str(caught.value)
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        trainer.load_state(tmp_path)
    with pytest.raises(CheckpointError, match="resume state not found"):
        trainer.load_state(tmp_path / "missing.pt")


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
@pytest.mark.usefixtures("sigint_delivered")
def test_a_signal_saves_the_state_and_sets_the_exit_status(
    tiny_camvid: Path, tmp_path: Path, signum: int, status: int
) -> None:
    out = tmp_path / "best.pt"
    state = state_path_for(out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RTSEG_ENGINE_DIR": str(tmp_path / "engines")}
    proc = subprocess.Popen(
        _cli(tiny_camvid, out, "--save-every", "0", "--epochs", "50"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not state.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "training never saved a state"
            time.sleep(0.05)
        proc.send_signal(signum)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status
    assert "stopped at epoch" in stdout and f"--resume {state}" in stdout
    assert _progress(state)["epoch"] < 50


def test_a_diverging_loss_stops_with_a_typed_error(tiny_camvid: Path, tmp_path: Path) -> None:
    from rtseg.errors import TrainingError

    trainer = Trainer(_config(tiny_camvid, tmp_path / "a.pt", class_weight_c=0), progress=False)
    real_loss = trainer.loss

    def diverged(logits, aux, labels):  # the real loss, times NaN: what a too-high learning rate gives
        loss, parts = real_loss(logits, aux, labels)
        return loss * float("nan"), parts

    trainer.loss = diverged
    # nothing was saved before the first batch: the message must not point at a state file
    match = r"loss became nan at epoch 1, batch 0: lower --lr .*\(no training state was saved yet\)"
    with pytest.raises(TrainingError, match=match):
        trainer.fit()
    assert not trainer.state_path.exists()


class _SignalOnFirstRead(Sequence):
    """A validation set that delivers SIGTERM to this process when its first image is read."""

    def __init__(self, data: Sequence) -> None:
        self.data = data
        self.reads = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):  # type: ignore[override]
        self.reads += 1
        if self.reads == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.data[index]


def test_a_signal_during_validation_stops_at_once_and_the_resume_validates(
    tiny_camvid: Path, tmp_path: Path
) -> None:
    """A validation can take minutes (Cityscapes val on a CPU): a stop signal used to wait for all of
    it and then for one more batch, or, in the last epoch, to end as "done" with exit status 130."""
    config = _config(tiny_camvid, tmp_path / "best.pt", class_weight_c=0)
    trainer = Trainer(config, progress=False)
    trainer.val_set = _SignalOnFirstRead(trainer.val_set)  # type: ignore[assignment]
    state = trainer.fit()
    assert trainer.stop_signal == signal.SIGTERM and trainer.val_set.reads == 1
    assert (state.epoch, state.batch, state.history) == (0, trainer.iters_per_epoch, [])
    assert not (tmp_path / "best.pt").exists()
    resumed = Trainer(config, progress=False)
    resumed.load_state(resumed.state_path)
    state = resumed.fit()
    assert state.epoch == 1 and "val_miou" in state.history[0] and (tmp_path / "best.pt").is_file()
    assert state.history[0]["loss"] is not None  # the epoch's batches ran before the stop, not after


@pytest.mark.parametrize("stderr_terminal", [False], indirect=True, ids=["stderr-a-file"])  # a short test
def test_the_progress_bar_is_drawn_on_a_terminal_only_and_each_epoch_said(
    tiny_camvid: Path,
    tmp_path: Path,
    stderr_terminal: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Under a service, the bar's redraws went into the journal: megabytes an hour."""
    monkeypatch.setattr(sys, "stderr", stderr_terminal)
    Trainer(_config(tiny_camvid, tmp_path / "a.pt", class_weight_c=0), progress=True).fit()
    assert ("\r" in stderr_terminal.getvalue()) is stderr_terminal.isatty()
    assert capsys.readouterr().out.count("epoch 1/1: loss ") == 1


def test_decoded_images_are_cached_only_when_they_fit(
    tiny_camvid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from rtseg import hardware

    cached = Trainer(_config(tiny_camvid, tmp_path / "a.pt", class_weight_c=0), progress=False)
    assert cached.train_set._cache is not None and cached.val_set._cache is not None
    monkeypatch.setattr(hardware, "available_memory_bytes", lambda: 1 << 16)  # 64 KB free
    with caplog.at_level(logging.WARNING, logger="rtseg.train.trainer"):
        lean = Trainer(_config(tiny_camvid, tmp_path / "b.pt", class_weight_c=0), progress=False)
    assert lean.train_set._cache is None and lean.val_set._cache is None
    assert "not caching decoded images" in caplog.text and "(0.0 GB)" in caplog.text
    assert lean.fit().epoch == 1  # and it still trains, reading from disk


def test_zero_disables_class_weights_and_zero_weight_decay_is_allowed() -> None:
    config = TrainConfig(
        model="espnet", dataset="camvid", root=".", out="x.pt", class_weight_c=0, weight_decay=0
    )
    assert (config.class_weight_c, config.weight_decay) == (0, 0)


def test_paths_are_stored_absolute_and_compared_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume with --root data after a run with --root /abs/data was refused as "other settings";
    the same relative --root from another folder (other data) was accepted."""
    (tmp_path / "a" / "data").mkdir(parents=True)
    (tmp_path / "b" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a")
    config = TrainConfig(model="espnet", dataset="camvid", root="data", out="runs/best.pt")
    assert (config.root, config.out) == (
        str(tmp_path / "a" / "data"),
        str(tmp_path / "a" / "runs" / "best.pt"),
    )
    saved = SavedState(tmp_path / "s.state.pt", {"config": config.to_dict()})
    absolute = TrainConfig(
        model="espnet",
        dataset="camvid",
        root=str(tmp_path / "a" / "data"),
        out=str(tmp_path / "a/runs/best.pt"),
    )
    saved.check_config(absolute)
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(ConfigError, match=r"other settings .*'root'"):
        saved.check_config(TrainConfig(model="espnet", dataset="camvid", root="data", out=str(absolute.out)))


def test_a_progress_entry_from_before_the_epoch_loss_fields_still_reads(tmp_path: Path) -> None:
    from rtseg.train.trainer import _saved_progress

    older = {"epoch": 2, "batch": 1, "best_miou": 0.5, "best_epoch": 1, "history": [], "seconds": 3.0}
    state = _saved_progress(tmp_path / "s.state.pt", json.dumps(older))
    assert (state.epoch, state.epoch_loss_sum, state.epoch_loss_batches) == (2, 0.0, 0)
    with pytest.raises(CheckpointError, match="epoch_loss_batches is -1"):
        _saved_progress(tmp_path / "s.state.pt", json.dumps({**older, "epoch_loss_batches": -1}))


def test_a_state_with_relative_paths_from_an_older_rtseg_still_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    old = TrainConfig(model="espnet", dataset="camvid", root="data", out="best.pt").to_dict()
    old.update(root="data", out="best.pt")  # as written before paths were made absolute
    SavedState(tmp_path / "s.state.pt", {"config": old}).check_config(
        TrainConfig(
            model="espnet", dataset="camvid", root=str(tmp_path / "data"), out=str(tmp_path / "best.pt")
        )
    )


def test_an_output_folder_that_cannot_be_made_is_refused_before_training(tmp_path: Path) -> None:
    """It was found when the first best weights were saved, after an epoch, with nothing saved."""
    (tmp_path / "blocker").write_text("keep")
    out = tmp_path / "blocker" / "sub" / "best.pt"
    with pytest.raises(ConfigError, match=r"out \(--out\) .*best.pt: cannot create the folder .*blocker/sub"):
        Trainer(_config(tmp_path / "no-dataset-needed", out), progress=False)
    assert (tmp_path / "blocker").read_text() == "keep"


def test_the_output_folder_is_made_before_training(tiny_camvid: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "best.pt"
    Trainer(_config(tiny_camvid, out, class_weight_c=0), progress=False)
    assert out.parent.is_dir()


def _damage(payload: dict, how: str) -> None:
    # Without its checksums (as a state from before them, or edited by hand): the checks of the
    # contents must name the damage on their own.
    del payload["tensors_sha256"], payload["meta_sha256"]
    if how == "no optimizer":
        del payload["optimizer"]
    elif how == "garbled progress":
        payload["progress"] = "{not json"
    elif how == "progress without epoch":
        progress = json.loads(payload["progress"])
        del progress["epoch"]
        payload["progress"] = json.dumps(progress)
    elif how == "partial model":
        payload["model"] = dict(list(payload["model"].items())[:5])
    elif how == "unexpected model tensor":
        payload["model"]["extra.weight"] = torch.zeros(1)
    elif how == "unknown config key":
        payload["config"]["bogus_key"] = 1
    elif how == "missing config key":
        del payload["config"]["lr"]
    elif how == "bad config value":
        payload["config"]["save_every_s"] = math.nan
    elif how == "format_version 99":
        payload["format_version"] = 99
    elif how == "optimizer of another run":
        payload["optimizer"]["param_groups"] = []


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("no optimizer", r"the training state has no 'optimizer' entry"),  # was: KeyError
        ("garbled progress", r"the 'progress' entry is unreadable \(Expecting"),  # was: JSONDecodeError
        ("progress without epoch", r"the 'progress' entry is unreadable \(keys .*expected"),  # was: epoch 0
        (
            "partial model",
            r"the 'model' entry does not fit espnet: \d+ tensors missing, first",
        ),  # RuntimeError
        (
            "unexpected model tensor",
            r"the 'model' entry does not fit espnet: 1 unexpected tensors.*extra.weight",
        ),
        ("unknown config key", r"the saved config has unknown keys \['bogus_key'\]"),  # was: TypeError
        ("missing config key", r"the saved config has missing keys \['lr'\]"),  # was: the default lr
        ("bad config value", r"the saved config is not usable: save_every_s"),
        (
            "format_version 99",
            r"format_version 99 is not supported .*reads format_version 1",
        ),  # was: accepted
        ("optimizer of another run", r"the 'optimizer' entry does not fit this run"),  # was: ValueError
    ],
)
def test_damaged_state_contents_are_named(tiny_camvid: Path, tmp_path: Path, how: str, message: str) -> None:
    trainer = Trainer(_config(tiny_camvid, tmp_path / "a.pt", class_weight_c=0), progress=False)
    trainer.save_state()
    payload = torch.load(trainer.state_path, weights_only=True)
    _damage(payload, how)
    damaged = tmp_path / "damaged.state.pt"
    torch.save(payload, damaged)
    with torch.no_grad():
        next(trainer.model.parameters()).add_(1)  # unlike the saved weights
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(CheckpointError, match=message) as caught:
        trainer.load_state(damaged)
    assert str(caught.value).startswith(f"{damaged}: ") and "\n" not in str(caught.value)
    for key, value in trainer.model.state_dict().items():  # nothing half-loaded
        assert torch.equal(value, before[key]), key
    if how not in ("partial model", "unexpected model tensor", "optimizer of another run"):
        with pytest.raises(CheckpointError, match=message):  # refused before the datasets are read
            read_state(damaged)


def test_an_intact_state_still_resumes(tiny_camvid: Path, tmp_path: Path) -> None:
    trainer = Trainer(_config(tiny_camvid, tmp_path / "a.pt", class_weight_c=0), progress=False)
    trainer.state.epoch, trainer.state.batch = 1, 2
    trainer.save_state()
    other = Trainer(_config(tiny_camvid, tmp_path / "a.pt", class_weight_c=0), progress=False)
    other.load_state(read_state(trainer.state_path))
    assert (other.state.epoch, other.state.batch) == (1, 2)


def test_a_new_run_refuses_an_earlier_runs_files_unless_told_to_overwrite(
    tiny_camvid: Path, tmp_path: Path
) -> None:
    out = tmp_path / "best.pt"
    state_path_for(out).write_bytes(b"earlier state")
    config = _config(tiny_camvid, out, class_weight_c=0)
    with pytest.raises(ConfigError, match=r"an earlier run left .*best.state.pt; pass --resume"):
        Trainer(config, progress=False).fit()
    assert state_path_for(out).read_bytes() == b"earlier state"
    trainer = Trainer(config, progress=False, overwrite=True)
    assert trainer.fit().epoch == 1
    assert _progress(state_path_for(out))["epoch"] == 1 and out.is_file()
    trainer.fit()  # the same trainer again: its own files, not an earlier run's


@pytest.mark.parametrize(("model", "variant"), [("espnet-c", {"q": 3}), ("espnetv2", {"scale": 1.0})])
def test_init_weights_of_another_variant_build_that_variant(
    tiny_camvid: Path, tmp_path: Path, model: str, variant: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """The fresh network was the registry's default variant (q = 8, s = 2.0): most init tensors
    did not fit it and were re-initialised without an error."""
    torch.manual_seed(3)
    source = get_model(model, **variant)  # Cityscapes classes: CamVid training loads what fits
    init = tmp_path / "city.pt"
    save_checkpoint(init, source.state_dict(), source.meta)
    config = replace(_config(tiny_camvid, tmp_path / "out.pt", init=str(init)), model=model, size=(64, 64))
    with caplog.at_level(logging.INFO, logger="rtseg.train.trainer"):
        trainer = Trainer(config, progress=False)
    assert {k: trainer.model.meta.config[k] for k in variant} == variant
    # only the layers whose shape follows the class count start afresh; every other tensor is loaded
    camvid_shapes = {k: v.shape for k, v in get_model(model, num_classes=11, **variant).state_dict().items()}
    target = trainer.model.state_dict()
    differ = [k for k, v in source.state_dict().items() if v.shape != camvid_shapes[k]]
    assert f"{len(differ)} re-initialised" in caplog.text
    for key, value in source.state_dict().items():
        assert key in differ or torch.equal(target[key], value), key


def _flip_byte_in_member(path: Path, member_suffix: str) -> None:
    """Flip one byte of a stored (uncompressed) member of torch.save's zip archive, as a failing
    disk or a bad copy would: torch.load checks no CRC and reads the changed value."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    data = bytearray(path.read_bytes())
    name_len, extra_len = (
        int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
        (int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")),
    )
    data[info.header_offset + 30 + name_len + extra_len + 2] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["value 3e38", "flipped byte", "edited progress"])
def test_a_corrupted_state_is_refused_by_its_checksum(tiny_camvid: Path, tmp_path: Path, how: str) -> None:
    """A tensor overwritten with 3e38 (inf in the fp16 best weights) or one flipped byte resumed
    and "trained", ending in a best.pt every command refuses."""
    trainer = Trainer(_config(tiny_camvid, tmp_path / "a.pt", class_weight_c=0), progress=False)
    trainer.save_state()
    damaged = tmp_path / "damaged.state.pt"
    if how == "flipped byte":
        damaged.write_bytes(trainer.state_path.read_bytes())
        _flip_byte_in_member(damaged, "data/0")
        what = "tensors"
    else:
        payload = torch.load(trainer.state_path, weights_only=True)
        if how == "value 3e38":
            payload["model"]["classifier.weight"].view(-1)[0] = 3e38
            what = "tensors"
        else:
            payload["progress"] = payload["progress"].replace('"epoch": 0', '"epoch": 7')
            what = "settings and progress"
        torch.save(payload, damaged)
    with pytest.raises(CheckpointError, match=rf"{what} .*do not match the checksum stored with them"):
        read_state(damaged)


def test_a_state_without_checksums_resumes_and_its_values_are_checked(
    tiny_camvid: Path, tmp_path: Path
) -> None:
    trainer = Trainer(_config(tiny_camvid, tmp_path / "a.pt", class_weight_c=0), progress=False)
    trainer.state.epoch = 1
    trainer.save_state()
    payload = torch.load(trainer.state_path, weights_only=True)
    del payload["tensors_sha256"], payload["meta_sha256"]  # as written before them
    older = tmp_path / "older.state.pt"
    torch.save(payload, older)
    trainer.load_state(older)
    assert trainer.state.epoch == 1
    payload["model"]["classifier.weight"].view(-1)[0] = math.inf
    torch.save(payload, older)
    with pytest.raises(
        CheckpointError, match=r"1 tensors of the training state hold NaN or infinite .*classifier"
    ):
        read_state(older)


@pytest.mark.parametrize(
    ("value", "message"), [(math.nan, "NaN or infinite"), (1e5, "values beyond float16's range")]
)
def test_best_weights_that_would_not_load_are_not_written(
    tiny_camvid: Path, tmp_path: Path, value: float, message: str
) -> None:
    from rtseg.errors import TrainingError

    trainer = Trainer(_config(tiny_camvid, tmp_path / "best.pt", class_weight_c=0), progress=False)

    def validate() -> float:  # the validation that finds weights past what the fp16 file holds
        with torch.no_grad():
            trainer.model.classifier.weight.view(-1)[0] = value
        return 0.5

    trainer.validate = validate  # type: ignore[method-assign]
    with pytest.raises(
        TrainingError, match=rf"cannot save the best weights .*1 tensors hold {message}.*classifier"
    ) as caught:
        trainer.fit()
    assert not (tmp_path / "best.pt").exists()
    assert "no training state was saved yet" in str(caught.value)


class _FullDisk:
    """A file that takes ``room`` bytes, then raises ENOSPC, as a write to a full disk does."""

    def __init__(self, f, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= size
        return self._f.write(data)

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def test_a_full_disk_is_a_typed_error_and_the_previous_files_are_kept(
    tiny_camvid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A raw OSError (the best weights) or torch's RuntimeError (the state) with a traceback."""
    import rtseg.atomic
    from rtseg.errors import TrainingError

    out = tmp_path / "best.pt"
    trainer = Trainer(_config(tiny_camvid, out, class_weight_c=0), progress=False)
    trainer.save_state()
    trainer._save_best(0.5, 0)
    state, best = trainer.state_path.read_bytes(), out.read_bytes()
    fdopen = os.fdopen
    monkeypatch.setattr(rtseg.atomic.os, "fdopen", lambda fd, mode: _FullDisk(fdopen(fd, mode), 4096))
    full = os.strerror(errno.ENOSPC)
    kept = f"the last saved state, {trainer.state_path}, is kept"
    with pytest.raises(TrainingError, match=re.escape(f"cannot write {trainer.state_path}: {full}; {kept}")):
        trainer.save_state()
    with pytest.raises(TrainingError, match=re.escape(f"cannot write {out}: {full}; {kept}")):
        trainer._save_best(0.6, 1)
    assert trainer.state_path.read_bytes() == state and out.read_bytes() == best
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "best.state.pt"]  # no temporary left


def _ctrl_c_during_final_save(
    trainer: Trainer, monkeypatch: pytest.MonkeyPatch, presses_during_save: int
) -> list[int]:
    """Ctrl-C in the first batch; ``presses_during_save`` more while the final state is written
    (a big state on a slow disk takes seconds). Returns the progress batch of each save begun."""
    import rtseg.train.trainer as trainer_module
    from rtseg.atomic import atomic_write

    real_loss = trainer.loss

    def loss(*args):
        if not saves:
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(*args)

    saves: list[int] = []

    def save(obj, path):
        def write(f) -> None:
            torch.save(obj, f)
            saves.append(json.loads(obj["progress"])["batch"])
            for _ in range(presses_during_save):
                os.kill(os.getpid(), signal.SIGINT)

        return atomic_write(path, write)

    trainer.loss = loss
    monkeypatch.setattr(trainer_module, "atomic_torch_save", save)
    try:
        trainer.fit()
    except KeyboardInterrupt:
        if presses_during_save < 2:
            pytest.fail("a second Ctrl-C aborted the final save")
        raise
    return saves


def test_a_second_ctrl_c_during_the_final_save_is_answered_and_the_save_completes(
    tiny_camvid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """fit put the original handlers back before the final save: the Ctrl-C users repeat then
    raised KeyboardInterrupt in the middle of it and lost everything since the last save."""
    trainer = Trainer(
        replace(_config(tiny_camvid, tmp_path / "best.pt", class_weight_c=0), epochs=50), progress=False
    )
    assert _ctrl_c_during_final_save(trainer, monkeypatch, presses_during_save=1) == [1]
    assert trainer.stop_signal == signal.SIGINT and _progress(trainer.state_path)["batch"] == 1
    err = capsys.readouterr().err
    assert f"stopping after this batch; the training state will be saved to {trainer.state_path}" in err
    assert "before stopping (the run resumes from it); Ctrl-C again to abandon the save" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back after the save


def test_a_third_ctrl_c_abandons_the_save_and_keeps_the_previous_state(
    tiny_camvid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = Trainer(
        replace(_config(tiny_camvid, tmp_path / "best.pt", class_weight_c=0), epochs=50), progress=False
    )
    trainer.save_state()
    trainer.load_state(trainer.state_path)
    before = trainer.state_path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        _ctrl_c_during_final_save(trainer, monkeypatch, presses_during_save=2)
    assert trainer.state_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.state.pt"]  # no temporary file left
    err = capsys.readouterr().err
    assert f"training abandoned; the last saved state, {trainer.state_path}, is kept" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_request_stop_ends_a_fit_on_another_thread_as_ctrl_c_does(tiny_camvid: Path, tmp_path: Path) -> None:
    """A fit() on a worker thread installs no signal handlers: it could end only at max_seconds.
    request_stop() from another thread stops it after the current batch with the state saved, as
    the Ctrl-C tests' stop in the first batch does, and a later fit trains on from there."""
    trainer = Trainer(
        replace(_config(tiny_camvid, tmp_path / "best.pt", class_weight_c=0), epochs=2), progress=False
    )
    real_loss = trainer.loss
    in_first_batch, stop_asked = threading.Event(), threading.Event()

    def loss(*args):  # type: ignore[no-untyped-def]
        in_first_batch.set()
        stop_asked.wait(60)  # the stop arrives during the first batch
        return real_loss(*args)

    trainer.loss = loss
    returned: list[object] = []
    worker = threading.Thread(target=lambda: returned.append(trainer.fit()), daemon=True)
    worker.start()
    assert in_first_batch.wait(120), "fit never reached its first batch"
    trainer.request_stop()
    trainer.loss = real_loss
    stop_asked.set()
    worker.join(120)
    assert not worker.is_alive(), "fit ran on after request_stop()"
    assert returned == [trainer.state] and trainer.stop_signal is None
    assert (trainer.state.epoch, trainer.state.batch) == (0, 1)
    progress = _progress(trainer.state_path)
    assert (progress["epoch"], progress["batch"]) == (0, 1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the thread took no signal
    assert trainer.fit().epoch == 2  # the request was spent on the fit it stopped
    assert _progress(trainer.state_path)["epoch"] == 2


@pytest.mark.parametrize("half", [True, False])
def test_validation_scores_the_weights_as_the_best_file_stores_them(
    tiny_camvid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, half: bool
) -> None:
    """The best file holds fp16 weights but validation ran on fp32 ones: the recorded 63.13 was
    63.12 when the file itself was evaluated."""
    from rtseg.train import trainer as trainer_module

    trainer = Trainer(_config(tiny_camvid, tmp_path / "best.pt", half_weights=half), progress=False)
    with torch.no_grad():
        trainer.model.classifier.weight.add_(1e-4)  # values fp16 cannot hold exactly
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    seen = {}

    def evaluate(*args, **kwargs):
        seen.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return real_evaluate(*args, **kwargs)

    real_evaluate = trainer_module.evaluate
    monkeypatch.setattr(trainer_module, "evaluate", evaluate)
    trainer.validate()
    for name, value in before.items():
        stored = value.half().to(value.dtype) if half and value.is_floating_point() else value
        assert torch.equal(seen[name], stored), name
        assert torch.equal(trainer.model.state_dict()[name], value), name  # training goes on at fp32
    assert trainer.model.training
