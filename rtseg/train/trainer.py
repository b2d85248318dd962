"""The training loop: resumable at any step, validated periodically, best weights kept.

Determinism is what makes resume exact: the sample order of epoch ``e`` and the augmentation of
sample ``i`` in it are drawn from generators seeded by ``(seed, e)`` and ``(seed, e, i)``, so a
run that restarts at (epoch, batch) sees the same batches it would have seen without the stop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .. import hardware
from .._version import __version__
from ..data.datasets import Sample, SegmentationDataset, open_dataset
from ..data.labels import corresponding_outputs
from ..data.preprocess import Normalize, Preprocessing
from ..engine.base import cuda_device_index
from ..errors import BackendUnavailableError, CheckpointError, ConfigError, TrainingError
from ..evaluate import evaluate, torch_logits_fn
from ..models import StagedSegmenter, get_model
from ..models.checkpoint import (
    TRAIN_STATE_FORMAT,
    WeightsMeta,
    atomic_torch_save,
    meta_sha256,
    nonfinite_tensors,
    save_checkpoint,
    tensors_sha256,
)
from ..models.registry import get_spec
from ..signals import restore, take
from ..terminal import progress_bar
from .augment import ScaleCropFlip
from .loss import SegmentationLoss, class_frequencies, enet_class_weights

log = logging.getLogger(__name__)

STATE_FORMAT = TRAIN_STATE_FORMAT  # defined with the checkpoint formats, which refuse it as weights
STATE_FORMAT_VERSION = 1
STATE_ENTRIES = ("config", "preprocessing", "model", "optimizer", "scaler", "progress")
DEFAULT_SIZE = (480, 360)  # TrainConfig.size and `rtseg train --size`: CamVid's own resolution


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved in its state so a resume cannot silently change it."""

    model: str
    dataset: str
    root: str
    out: str  # best weights, rtseg checkpoint format
    size: tuple[int, int] = DEFAULT_SIZE  # network input (w, h) for validation; also the crop
    epochs: int = 100
    batch: int = 8
    lr: float = 5e-4
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = 2e-4
    momentum: float = 0.9
    poly_power: float = 0.9
    scale_range: tuple[float, float] = (0.5, 2.0)
    class_weight_c: float = 1.10  # ENet-style 1/ln(c + p); 0 disables class weighting
    train_split: str = "train"
    val_split: str = "val"
    val_every: int = 1
    seed: int = 0
    init: str | None = None  # weights to fine-tune from (matching tensors are loaded)
    device: str = "cpu"
    amp: bool = True  # mixed precision on CUDA; ignored on CPU
    compile: bool = False  # torch.compile the training step (about 2x on CPU after a ~2 min compile)
    save_every_s: float = 60.0
    half_weights: bool = True  # ship the best weights as fp16

    def __post_init__(self) -> None:
        # Absolute paths: a resume from another working folder must compare the same data and
        # output, and a relative --root that names other data there must not pass as the same run.
        object.__setattr__(self, "root", str(Path(self.root).resolve()))
        object.__setattr__(self, "out", str(Path(self.out).resolve()))
        for name in ("epochs", "batch", "val_every"):
            if getattr(self, name) <= 0:
                option = name.replace("_", "-")
                raise ConfigError(f"{name} (--{option}) must be positive, got {getattr(self, name)}")
        # Seeds (seed, epoch) NumPy generators, which take no negative number, and torch's dropout
        # as seed * 1_000_003 + step, which must fit in 64 bits.
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed (--seed) must be a whole number in 0..{2**32 - 1}, got {self.seed}")
        # NaN passes every comparison check (and torch refuses it mid-setup with a traceback); an
        # infinite rate or decay "trains" on NaN weights.
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr (--lr) must be a finite number > 0, got {self.lr:g}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(
                f"weight_decay (--weight-decay) must be a finite number >= 0, got {self.weight_decay:g}"
            )
        if not (math.isfinite(self.momentum) and self.momentum >= 0):
            raise ConfigError(f"momentum must be a finite number >= 0, got {self.momentum:g}")
        if not (math.isfinite(self.poly_power) and self.poly_power >= 0):
            raise ConfigError(f"poly_power must be a finite number >= 0, got {self.poly_power:g}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        c = self.class_weight_c
        if c != 0 and not (math.isfinite(c) and c > 1):
            raise ConfigError(
                f"class_weight_c (--class-weight-c) must be a finite number > 1 (or 0 to disable), got {c:g}"
            )
        low, high = self.scale_range
        if not 0 < low <= high < math.inf:
            raise ConfigError(f"scale_range must satisfy 0 < MIN <= MAX < inf, got {low:g} {high:g}")
        if not (math.isfinite(self.save_every_s) and self.save_every_s >= 0):
            raise ConfigError(
                f"save_every_s (--save-every) must be a finite number >= 0 (0 = every batch), "
                f"got {self.save_every_s:g}"
            )
        if self.device != "cpu" and cuda_device_index(self.device) is None:
            raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.device != "cpu" and not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"device {self.device}: this PyTorch build sees no CUDA device (torch "
                f"{torch.__version__}); install a CUDA build of torch or train with --device cpu"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["scale_range"] = list(self.scale_range)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | Path = "config") -> TrainConfig:
        """The config a state file saved; CheckpointError (naming ``source``) for unknown or missing
        keys: a default taken in silence would resume a run with other settings than it had."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: the saved config is a {type(d).__name__}, not a mapping")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        missing = [n for n in names if n not in d]
        if unknown or missing:
            parts = [
                f"{what} keys {keys}" for what, keys in (("unknown", unknown), ("missing", missing)) if keys
            ]
            raise CheckpointError(
                f"{source}: the saved config has {' and '.join(parts)}; was it written by another "
                f"rtseg version (this is {__version__})?"
            )
        d = dict(d)
        try:
            d["size"] = tuple(d["size"])
            d["scale_range"] = tuple(d["scale_range"])
            return cls(**d)
        except ConfigError as exc:
            raise CheckpointError(f"{source}: the saved config is not usable: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: the saved config is damaged ({exc})") from None


@dataclass
class TrainState:
    epoch: int = 0  # epoch in progress
    batch: int = 0  # batches of that epoch already done
    best_miou: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # training time spent across all resumed chunks
    # The epoch in progress's loss so far: a chunk that resumes it (even only to validate it, after
    # a stop during validation) reports the whole epoch's mean loss, not that of its own batches.
    epoch_loss_sum: float = 0.0
    epoch_loss_batches: int = 0


# Fields a state file from before they existed may lack (their defaults are right for it).
_LATER_PROGRESS_FIELDS = ("epoch_loss_sum", "epoch_loss_batches")


class _ValidationStopped(Exception):
    """A stop signal arrived during validation; the epoch is validated again after a resume."""


@dataclass(frozen=True)
class SavedState:
    """A training state file, read and checked (``read_state``)."""

    path: Path
    payload: dict[str, Any] = field(repr=False)

    def check_config(self, config: TrainConfig) -> None:
        """Only the stopping point may differ between chunks; anything else would change the run."""
        saved = TrainConfig.from_dict(self.payload["config"], source=self.path)
        mine = replace(config, epochs=saved.epochs, save_every_s=saved.save_every_s, compile=saved.compile)
        if mine != saved:
            diff = {k: (v, getattr(config, k)) for k, v in asdict(saved).items() if getattr(mine, k) != v}
            raise ConfigError(f"{self.path} was written by a run with other settings (saved, now): {diff}")


def read_state(path: str | Path) -> SavedState:
    """A training state file, or CheckpointError saying why it is unusable.

    Separate from ``Trainer.load_state`` so ``rtseg train --resume`` can refuse a bad file before
    the datasets are read (seconds on CamVid, minutes on Cityscapes)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"resume state not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"resume state {path} is a folder, not a file (OUT.state.pt)")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # torch.save's zip archive, as save_state writes it
        what = "an empty file" if not head else f"a file starting with bytes {head!r}"
        raise CheckpointError(f"{path} is not an rtseg training state (written by `rtseg train`): {what}")
    try:
        # On the CPU: load_state_dict copies each tensor to where the model and optimizer live.
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... here
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot read the training state; the file is truncated or corrupt ({reason})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not an rtseg training state (written by `rtseg train`)")
    _check_payload(path, payload)
    return SavedState(path, payload)


def _check_payload(path: Path, payload: dict[str, Any]) -> tuple[Preprocessing, TrainState]:
    """Refuse a state whose marker is right but whose contents are not (a newer format, a damaged
    or hand-edited file) with a CheckpointError naming the entry, not a KeyError mid-resume;
    returns the preprocessing and progress it read."""
    version = payload.get("format_version")
    if type(version) is not int or version != STATE_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: training state format_version {version!r} is not supported (rtseg "
            f"{__version__} reads format_version {STATE_FORMAT_VERSION}); was it written by another "
            "rtseg version?"
        )
    missing = [k for k in STATE_ENTRIES if k not in payload]
    if missing:
        raise CheckpointError(
            f"{path}: the training state has no {', '.join(map(repr, missing))} entry; the file is damaged"
        )
    TrainConfig.from_dict(payload["config"], source=path)
    preprocessing = _saved_preprocessing(path, payload["preprocessing"])
    progress = _saved_progress(path, payload["progress"])
    for key in ("model", "optimizer", "scaler"):
        if not isinstance(payload[key], dict):
            raise CheckpointError(
                f"{path}: the {key!r} entry is a {type(payload[key]).__name__}, not a mapping; "
                "the file is damaged"
            )
    bad = [k for k, v in payload["model"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: the 'model' entry has {len(bad)} non-tensor values, first: {bad[:3]}")
    tensors, plain = _split_state(payload)
    # States from before the checksums have none: their values are only checked for finiteness.
    for key, digest in (("tensors_sha256", tensors_sha256), ("meta_sha256", meta_sha256)):
        stored = payload.get(key)
        if stored is not None and stored != digest(tensors if key == "tensors_sha256" else plain):
            what = "tensors (weights, optimiser)" if key == "tensors_sha256" else "settings and progress"
            raise CheckpointError(
                f"{path}: the training state's {what} do not match the checksum stored with them; "
                "the file is corrupt (a bad copy or a failing disk): resume from an intact copy"
            )
    infinite = nonfinite_tensors(tensors)
    if infinite:
        raise CheckpointError(
            f"{path}: {len(infinite)} tensors of the training state hold NaN or infinite values, first: "
            f"{infinite[:5]}; the file is corrupt"
        )
    return preprocessing, progress


_DIGESTS = ("tensors_sha256", "meta_sha256")


def _split_state(payload: dict[str, Any]) -> tuple[dict[str, torch.Tensor], Any]:
    """A state's tensors by path ('model.conv.weight', 'optimizer.state.0.exp_avg') and the rest
    with each tensor replaced by its path: what ``tensors_sha256`` and ``meta_sha256`` digest, so
    a flipped byte anywhere (torch.load checks no CRC) is found before it is trained on."""
    tensors: dict[str, torch.Tensor] = {}

    def split(value: Any, where: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[where] = value
            return f"<tensor {where}>"
        if isinstance(value, dict):
            return {str(k): split(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [split(v, f"{where}.{i}") for i, v in enumerate(value)]
        return value

    plain = {k: split(v, k) for k, v in payload.items() if k not in _DIGESTS}
    return tensors, plain


def _saved_preprocessing(path: Path, data: Any) -> Preprocessing:
    try:
        return Preprocessing.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:  # ConfigError is a ValueError
        raise CheckpointError(
            f"{path}: the 'preprocessing' entry is unreadable ({type(exc).__name__}: {exc})"
        ) from None


def _saved_progress(path: Path, text: Any) -> TrainState:
    """The progress entry (JSON text); every field is required: a missing epoch would restart at 0."""

    def unreadable(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: the 'progress' entry is unreadable ({why}); the file is damaged")

    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise unreadable(str(exc)) from None
    names = [f.name for f in fields(TrainState)]
    if not isinstance(data, dict):
        raise unreadable(f"a JSON {type(data).__name__}, not an object")
    required = [n for n in names if n not in _LATER_PROGRESS_FIELDS]
    if not set(required) <= set(data) <= set(names):
        raise unreadable(f"keys {sorted(data)}, expected {names}")
    for key in ("epoch", "batch", "best_epoch", "best_miou", "seconds", *_LATER_PROGRESS_FIELDS):
        if key not in data:
            continue
        value = data[key]
        number = (int, float) if key in ("best_miou", "seconds", "epoch_loss_sum") else int
        if (
            isinstance(value, bool)
            or not isinstance(value, number)
            or (key in ("epoch", "batch", "epoch_loss_batches") and value < 0)
        ):
            raise unreadable(f"{key} is {value!r}")
    if not isinstance(data["history"], list):
        raise unreadable(f"history is a {type(data['history']).__name__}, not a list")
    return TrainState(**data)


def state_path_for(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".state.pt")


def earlier_run_files(out: str | Path) -> list[Path]:
    """What a run with this ``out`` left behind: its resumable state and its best weights."""
    out = Path(out)
    return [p for p in (state_path_for(out), out) if p.exists()]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # one of them does not exist
        return False


def check_out_is_free(out: str | Path, *, overwrite: bool, init: str | Path | None = None) -> list[Path]:
    """The earlier run's files that a new run would replace; ConfigError naming them unless
    ``overwrite``: a command repeated without --resume (arrow-up after a Ctrl-C) replaced hours
    of training without a word. The ``init`` checkpoint is never one of them: --overwrite
    deleted it, fine-tuning into the file it started from."""
    if init is not None:
        for path in (Path(out), state_path_for(out)):
            if _same_file(Path(init), path):
                raise ConfigError(
                    f"out (--out) {out}: {path} is the --init checkpoint {init}; a new run would "
                    "replace the weights it starts from: write to another --out"
                )
    files = earlier_run_files(out)
    if files and not overwrite:
        state = state_path_for(out)
        named = " and ".join(str(p) for p in files)
        how = (
            f"pass --resume {state} to continue that run, or --overwrite to start afresh (which deletes them)"
            if state in files
            else "pass --overwrite to start afresh (which deletes it), or choose another --out"
        )
        raise ConfigError(f"out (--out) {out}: an earlier run left {named}; {how}")
    return files


def dataset_statistics(dataset: SegmentationDataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel BGR mean and std over the training images (for standardising the input)."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    n = 0
    for sample in dataset:
        pixels = sample.image.reshape(-1, 3).astype(np.float64)
        total += pixels.sum(0)
        total_sq += (pixels**2).sum(0)
        n += pixels.shape[0]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 1e-6))
    return tuple(round(float(v), 3) for v in mean), tuple(round(float(v), 3) for v in std)


def check_size(config: TrainConfig, multiple: int) -> None:
    """ConfigError unless ``config.size`` is a multiple of the network's ``multiple`` (ICNet 32,
    DeepLabV3+ its output stride, ESPNetv2 16), naming the nearest sizes that are."""
    w, h = config.size
    if not (w % multiple or h % multiple):
        return
    down = f"{max(multiple, w // multiple * multiple)}x{max(multiple, h // multiple * multiple)}"
    up = f"{-(-w // multiple) * multiple}x{-(-h // multiple) * multiple}"
    default = " (the default --size)" if tuple(config.size) == DEFAULT_SIZE else ""
    raise ConfigError(
        f"{config.model} needs an input size divisible by {multiple}, got {w}x{h}{default}; "
        f"the nearest sizes it takes are {down} and {up}: pass one with --size WxH"
    )


class Trainer:
    def __init__(self, config: TrainConfig, *, progress: bool = True, overwrite: bool = False) -> None:
        """``overwrite``: a new run (no ``load_state``) may replace an earlier run's files in
        ``config.out``; without it, ``fit`` refuses to start over them."""
        self.config = config
        self.progress = progress
        self.overwrite = overwrite
        self._continues = False  # set by load_state, and by a first fit: the files are this run's
        self.device = torch.device(config.device)
        # The init weights and the size check come before the datasets are read: icnet-r50 at the
        # default 480x360 was refused after ~8 s of dataset statistics (minutes on Cityscapes).
        init_model = get_model(config.model, weights=config.init) if config.init else None
        network = init_model if init_model is not None else get_model(config.model)  # the same variant
        check_size(config, network.stage_spec.input_multiple)
        self._make_output_folder()
        self.train_set = open_dataset(config.dataset, config.root, config.train_split)
        self.val_set = open_dataset(config.dataset, config.root, config.val_split)
        self._cache_if_it_fits()
        self._check_val_set()
        self.classes = self.train_set.classes
        self.state_path = state_path_for(config.out)
        self.state = TrainState()
        self._stop_signal: int | None = None
        # Set by request_stop (a signal handler, another thread), read by fit between batches: a
        # plain attribute, not an Event, whose lock a signal handler could find held by this thread.
        self._stop_requested = False
        self._repeated_interrupts = 0  # Ctrl-C presses after the one that stopped the run
        self._validating = False

        self.init_provenance: dict[str, Any] | None = None
        if init_model is not None:
            self.preprocessing = init_model.meta.preprocessing.with_input_size(config.size)
            self.init_provenance = {"file": str(config.init), **init_model.meta.provenance}
        else:
            mean, std = dataset_statistics(self.train_set)
            self.preprocessing = Preprocessing("BGR", mean, std, input_size=config.size)  # type: ignore[arg-type]
        torch.manual_seed(config.seed)  # the initial weights are part of the run
        self.model = self._initial_model(init_model)
        self.model.to(self.device)
        self.normalize = Normalize(self.preprocessing).to(self.device)

        weights = None
        if config.class_weight_c:
            freq = class_frequencies(self.train_set, len(self.classes), self.classes.ignore_index)
            weights = torch.from_numpy(enet_class_weights(freq, config.class_weight_c))
        self.class_weights = weights
        self.loss = SegmentationLoss(
            len(self.classes),
            weights,
            self.classes.ignore_index,
            aux_weights=getattr(self.model, "aux_weights", None),
        ).to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if config.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=config.lr, weight_decay=config.weight_decay
            )
        else:
            self.optimizer = torch.optim.SGD(
                params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        self.augment = ScaleCropFlip(config.size, config.scale_range, ignore_index=self.classes.ignore_index)
        self.iters_per_epoch = len(self.train_set) // config.batch
        if self.iters_per_epoch == 0:
            raise ConfigError(
                f"batch {config.batch} is larger than the training set ({len(self.train_set)} images)"
            )
        self.train_forward = (
            torch.compile(self.model.forward_with_aux) if config.compile else self.model.forward_with_aux
        )
        self.use_amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

    def _make_output_folder(self) -> None:
        """Create the folder of ``out`` before training: one that cannot be made was otherwise found
        when the first best weights were saved, after an epoch, with nothing saved at all."""
        out = Path(self.config.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"out (--out) {out}: cannot create the folder {out.parent}: {exc.strerror or exc}"
            ) from None
        if not os.access(out.parent, os.W_OK | os.X_OK):
            raise ConfigError(f"out (--out) {out}: no permission to write in {out.parent}")

    def _check_val_set(self) -> None:
        """Read every validation label now (which checks its ids and size against its image, and
        fills the cache when it is on): a bad or all-void label was otherwise found by the first
        validation, after a whole epoch of training (hours, on Cityscapes)."""
        ignore = self.val_set.classes.ignore_index
        labelled = sum(int(np.count_nonzero(sample.label != ignore)) for sample in self.val_set)
        if len(self.val_set) and not labelled:
            raise ConfigError(
                f"{self.val_set.description}: no labelled pixel in its {len(self.val_set)} label maps "
                f"(all {ignore}, void): nothing to validate on"
            )

    def _cache_if_it_fits(self) -> None:
        """Keep decoded images in memory (every epoch revisits them all) when they fit in half of
        what is available; full Cityscapes would need about 25 GB, so it is then re-read."""
        sets = [s for s in (self.train_set, self.val_set) if len(s)]
        need = sum(len(s) * (s[0].image.nbytes + s[0].label.nbytes) for s in sets)
        budget = hardware.available_memory_bytes() // 2
        if need <= budget:
            for s in sets:
                s.cache_in_memory()
            return
        log.warning(
            "not caching decoded images: about %.1f GB would exceed half the available memory "
            "(%.1f GB); they are read from disk every epoch",
            need / 2**30,
            budget / 2**30,
        )

    def _initial_model(self, init: StagedSegmenter | None) -> StagedSegmenter:
        """Fresh weights; the init weights whole (same classes); the init network with its outputs
        selected by class correspondence (e.g. CamVid from Cityscapes, where the network has a
        ``select_outputs``); or else the init tensors whose names and shapes fit, in a network
        of the init weights' own variant (ESPNet's p and q, ESPNetv2's scale)."""
        if init is None:
            return get_model(self.config.model, num_classes=len(self.classes))
        source = init.meta.classes
        if source.names == self.classes.names:
            log.info("fine-tuning from %s: every tensor loaded (same classes)", self.config.init)
            return init
        indices = corresponding_outputs(self.classes, source)
        select = getattr(init, "select_outputs", None)
        if indices is not None and select is not None:
            model = select(indices)
            config = dict(init.meta.config)
            read_config = get_spec(self.config.model).config_from_state_dict
            if read_config is not None:  # the architecture as the selected weights describe it
                config.update(read_config(model.state_dict()))
                config.pop("num_outputs", None)
            model.meta = replace(  # type: ignore[type-var]
                init.meta, config=config, classes=self.classes, num_outputs=len(indices)
            )
            pairs = ", ".join(
                f"{t}<-{source.names[i]}" for t, i in zip(self.classes.names, indices, strict=True)
            )
            log.info(
                "fine-tuning from %s: every tensor loaded; outputs from %s classes (%s)",
                self.config.init,
                source.name,
                pairs,
            )
            return model
        fresh = get_model(self.config.model, num_classes=len(self.classes), **self._init_variant(init))
        self._load_matching(fresh, init.state_dict())
        return fresh

    def _init_variant(self, init: StagedSegmenter) -> dict[str, Any]:
        """The init weights' architecture without their output count: the registry's default
        variant made ``--model espnet-c --init espnet_p_2_q_3.pth`` a q = 8 network with 61
        tensors re-initialised (ESPNetv2 s = 1.0 weights: an s = 2.0 one with 388)."""
        config = {k: v for k, v in init.meta.config.items() if k not in ("num_outputs", "num_classes")}
        width = config.get("width")  # ESPNet's decoder width, which must hold every output
        if width is not None and width < len(self.classes):
            del config["width"]
        return config

    def _load_matching(self, model: torch.nn.Module, source: dict[str, torch.Tensor]) -> None:
        target = model.state_dict()
        loaded = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
        skipped = [k for k in target if k not in loaded]
        model.load_state_dict({**target, **loaded})
        log.info(
            "fine-tuning from %s: %d tensors loaded, %d re-initialised%s",
            self.config.init,
            len(loaded),
            len(skipped),
            f" (first: {skipped[:3]})" if skipped else "",
        )

    # ----- resumable state ---------------------------------------------------------------
    def save_state(self) -> None:
        payload = {
            "format": STATE_FORMAT,
            "format_version": STATE_FORMAT_VERSION,
            "config": self.config.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": json.dumps(asdict(self.state)),
        }
        tensors, plain = _split_state(payload)
        payload["tensors_sha256"] = tensors_sha256(tensors)
        payload["meta_sha256"] = meta_sha256(plain)
        with self._writing(self.state_path):
            atomic_torch_save(payload, self.state_path)

    @contextlib.contextmanager
    def _writing(self, path: str | Path) -> Iterator[None]:
        """A failed write (a full disk) as a TrainingError naming the file, the reason and the state
        that is kept (the writes are atomic: the previous file is intact), not a traceback; torch's
        zip writer ends a failed write with a RuntimeError whose context is the OSError."""
        try:
            yield
        except (OSError, RuntimeError) as exc:
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, OSError):
                cause = cause.__context__
            if isinstance(cause, OSError):
                reason = cause.strerror or str(cause)
            elif isinstance(exc, RuntimeError) and "PytorchStreamWriter" not in str(exc):
                raise  # not a failed write
            else:
                reason = str(exc).strip().splitlines()[0]
            raise TrainingError(f"cannot write {path}: {reason}; {self._kept_state()}") from None

    @property
    def stop_signal(self) -> int | None:
        """The signal that stopped the last ``fit`` early (SIGINT, SIGTERM), if one did."""
        return self._stop_signal

    def request_stop(self) -> None:
        """Stop the running ``fit`` as Ctrl-C does: after the current batch (a validation at once),
        with the state saved, and ``fit`` returns. Safe from any thread: a ``fit`` on a worker thread
        installs no signal handlers, and without this ended only at ``max_seconds``. A stop asked
        while no ``fit`` runs stops the next one after its first batch."""
        self._stop_requested = True

    def load_state(self, state: str | Path | SavedState) -> None:
        """Continue from a state file (or one ``read_state`` already read)."""
        saved = state if isinstance(state, SavedState) else read_state(state)
        payload, path = saved.payload, saved.path
        preprocessing, progress = _check_payload(path, payload)  # also for a SavedState built by hand
        saved.check_config(self.config)
        self._check_model_entry(path, payload["model"])
        # The model last: its tensors are checked above, so a failure here leaves it as it was.
        for key, target in (("optimizer", self.optimizer), ("scaler", self.scaler), ("model", self.model)):
            try:
                target.load_state_dict(payload[key])
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CheckpointError(
                    f"{path}: the {key!r} entry does not fit this run ({type(exc).__name__}: {reason}); "
                    "the file is damaged"
                ) from None
        self.preprocessing = preprocessing
        self.normalize = Normalize(self.preprocessing).to(self.device)
        self.state = progress
        self._continues = True
        log.info(
            "resumed %s at epoch %d, batch %d (best val mIoU %.2f)",
            path,
            self.state.epoch + 1,  # 1-based, as "stopped at epoch N" said it
            self.state.batch,
            100 * max(self.state.best_miou, 0),
        )

    def _check_model_entry(self, path: Path, tensors: dict[str, Any]) -> None:
        """Name the tensors a state lacks, has in excess or has in another shape (load_state_dict's
        RuntimeError lists them all, over many lines)."""
        expected = self.model.state_dict()
        missing = [k for k in expected if k not in tensors]
        unexpected = [k for k in tensors if k not in expected]
        shapes = [
            f"{k} {tuple(tensors[k].shape)} (model: {tuple(expected[k].shape)})"
            for k in expected
            if k in tensors and tensors[k].shape != expected[k].shape
        ]
        if missing or unexpected or shapes:
            parts = [
                f"{len(items)} {what}, first: {items[:3]}"
                for what, items in (
                    ("tensors missing", missing),
                    ("unexpected tensors", unexpected),
                    ("tensors of another shape", shapes),
                )
                if items
            ]
            raise CheckpointError(
                f"{path}: the 'model' entry does not fit {self.config.model}: {'; '.join(parts)}; "
                "the file is damaged"
            )

    # ----- data ---------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.config.seed, epoch)).permutation(len(self.train_set))

    def _make_batch(self, epoch: int, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for i in indices:
            sample = self.train_set[int(i)]
            rng = np.random.default_rng((self.config.seed, epoch, int(i)))
            image, label = self.augment(sample.image, sample.label, rng)
            images.append(image)
            labels.append(label)
        return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels)).long()

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        order = self._epoch_order(epoch)
        b = self.config.batch
        jobs = [(k, order[k * b : (k + 1) * b]) for k in range(start, self.iters_per_epoch)]
        with ThreadPoolExecutor(max_workers=1) as pool:  # prepares batch k+1 while k trains
            pending = pool.submit(self._make_batch, epoch, jobs[0][1]) if jobs else None
            for n, (k, _) in enumerate(jobs):
                images, labels = pending.result()  # type: ignore[union-attr]
                if n + 1 < len(jobs):
                    pending = pool.submit(self._make_batch, epoch, jobs[n + 1][1])
                yield k, images, labels

    # ----- loop ---------------------------------------------------------------------------
    def _lr_at(self, step: int) -> float:
        total = self.config.epochs * self.iters_per_epoch
        return self.config.lr * (1 - min(step, total - 1) / total) ** self.config.poly_power

    def _on_signal(self, signum: int, _frame: Any) -> None:
        """The first SIGINT or SIGTERM stops the run after the current batch, with its state saved.
        As ``rtseg run`` treats a video being closed, the Ctrl-C users repeat while that happens is
        answered (an aborted save loses everything since the last one), and the next one obeyed:
        KeyboardInterrupt, the previous state file kept whole. A repeated SIGTERM changes nothing."""
        if self._stop_signal is None:
            self._stop_signal = signum
            self.request_stop()
            when = "now (the resumed run repeats this validation)" if self._validating else "after this batch"
            self._say(f"stopping {when}; the training state will be saved to {self.state_path}")
            return
        if signum != signal.SIGINT:
            return
        self._repeated_interrupts += 1
        if self._repeated_interrupts == 1:
            self._say(
                f"saving the training state to {self.state_path} before stopping (the run resumes from "
                "it); Ctrl-C again to abandon the save"
            )
            return
        raise KeyboardInterrupt

    @staticmethod
    def _say(text: str) -> None:
        print(f"\n{text}", file=sys.stderr, flush=True)  # on a line of its own, below the progress bar

    def validate(self) -> float:
        """Val mIoU. A stop signal abandons it (a validation can take minutes) with _ValidationStopped."""

        def samples() -> Iterator[Sample]:
            for sample in self.val_set:
                if self._stop_requested:
                    raise _ValidationStopped
                yield sample

        self.model.eval()
        self._validating = True
        try:
            with self._as_saved():
                report = evaluate(
                    torch_logits_fn(self.model, self.preprocessing),
                    samples(),
                    classes=self.classes,
                    input_size=self.config.size,
                    interpolation=self.preprocessing.interpolation,
                    total=len(self.val_set),
                    progress=False,
                )
        finally:
            self.model.train()
            self._validating = False
        return report.scores.miou

    @contextlib.contextmanager
    def _as_saved(self) -> Iterator[None]:
        """The network as the best weights will be saved: rounded to fp16 (half_weights) while
        validating, so the mIoU recorded in the file and used to pick the best is the file's
        (fp32 validation recorded 63.13 for weights that evaluate to 63.12), then restored, so
        training goes on at full precision."""
        if not self.config.half_weights:
            yield
            return
        kept = {k: v.detach().clone() for k, v in self.model.state_dict().items() if v.is_floating_point()}
        state = self.model.state_dict()
        with torch.no_grad():
            for k in kept:
                state[k].copy_(state[k].half())
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in kept.items():
                    state[k].copy_(v)

    def _save_best(self, miou: float, epoch: int) -> None:
        c = self.config
        meta = WeightsMeta(
            model=c.model,
            config=dict(self.model.meta.config),
            classes=self.classes,
            num_outputs=self.model.num_outputs,
            preprocessing=self.preprocessing,
            provenance={
                "source": "rtseg train",
                "rtseg_version": __version__,
                "dataset": f"{c.dataset} {c.train_split} ({len(self.train_set)} images)",
                "selected_on": f"{c.dataset} {c.val_split} mIoU",
                "epoch": epoch + 1,
                "recipe": {k: v for k, v in c.to_dict().items() if k not in ("root", "out", "device")},
                **({"initialised_from": self.init_provenance} if self.init_provenance else {}),
                "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
            metrics={f"{c.dataset}/{c.val_split}": {"miou": round(100 * miou, 2), "by": "rtseg train"}},
        )
        state = self.model.state_dict()
        self._check_savable(state)
        with self._writing(c.out):
            save_checkpoint(c.out, state, meta, half=c.half_weights)

    def _check_savable(self, state: dict[str, torch.Tensor]) -> None:
        """TrainingError naming the tensors that would make the best weights unusable: every
        command refuses NaN or infinite weights, and fp16 turns a weight past 65504 into inf."""
        bad = nonfinite_tensors(state)
        what = "hold NaN or infinite values"
        if not bad and self.config.half_weights:
            bad = nonfinite_tensors({k: v.half() for k, v in state.items() if v.is_floating_point()})
            what = "hold values beyond float16's range (+-65504), which the fp16 best weights store as inf"
        if bad:
            raise TrainingError(
                f"cannot save the best weights {self.config.out}: {len(bad)} tensors {what}, first: "
                f"{bad[:5]}; the run diverged: lower --lr ({self._kept_state()})"
            )

    def _kept_state(self) -> str:
        """What a run that fails now leaves to resume from."""
        if self.state_path.exists():
            return f"the last saved state, {self.state_path}, is kept"
        return "no training state was saved yet"

    def fit(self, *, max_seconds: float | None = None) -> TrainState:
        """Train until ``epochs`` or ``max_seconds``; always leaves a resumable state behind."""
        c = self.config
        if not self._continues:
            for path in check_out_is_free(c.out, overwrite=self.overwrite, init=c.init):
                path.unlink()
                log.info("overwrite: deleted %s of an earlier run", path)
            self._continues = True
        st = self.state
        total_steps = c.epochs * self.iters_per_epoch
        done_steps = st.epoch * self.iters_per_epoch + st.batch
        self._repeated_interrupts = 0
        self._stop_signal = None  # of the last fit: a signal that stopped an earlier one is spent
        old_handlers = {s: take(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        started = time.monotonic()
        last_save = started
        bar = progress_bar(
            total=total_steps,
            initial=done_steps,
            unit="batch",
            progress=self.progress,
            desc=f"train {c.model}",
            dynamic_ncols=True,
        )
        self.model.train()
        stopped = False
        try:
            while st.epoch < c.epochs and not stopped:
                losses: list[float] = []
                for k, images, labels in self._batches(st.epoch, st.batch):
                    step = st.epoch * self.iters_per_epoch + k
                    lr = self._lr_at(step)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    torch.manual_seed(c.seed * 1_000_003 + step)  # dropout masks follow the step
                    x = self.normalize(images.to(self.device)).contiguous()
                    y = labels.to(self.device)
                    with torch.autocast(self.device.type, enabled=self.use_amp):
                        logits, aux = self.train_forward(x)
                    loss, _parts = self.loss(logits, aux, y)
                    if not math.isfinite(float(loss.detach())):
                        raise TrainingError(
                            f"loss became {float(loss.detach())} at epoch {st.epoch + 1}, batch {k}: "
                            f"lower --lr or check the labels ({self._kept_state()})"
                        )
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    losses.append(float(loss.detach()))
                    st.epoch_loss_sum += losses[-1]
                    st.epoch_loss_batches += 1
                    st.batch = k + 1
                    bar.update(1)
                    bar.set_postfix(epoch=st.epoch + 1, loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr:.2e}")
                    now = time.monotonic()
                    if self._stop_requested or (max_seconds and now - started >= max_seconds):
                        stopped = True
                        break
                    if now - last_save >= c.save_every_s:
                        st.seconds += now - last_save
                        last_save = now
                        self.save_state()
                if stopped:
                    break
                mean_loss = st.epoch_loss_sum / st.epoch_loss_batches if st.epoch_loss_batches else None
                entry: dict[str, Any] = {
                    "epoch": st.epoch + 1,
                    "loss": None if mean_loss is None else round(mean_loss, 4),
                }
                if (st.epoch + 1) % c.val_every == 0 or st.epoch + 1 == c.epochs:
                    try:
                        miou = self.validate()
                    except _ValidationStopped:
                        stopped = True  # with batch == iters_per_epoch: the resume validates first
                        break
                    entry["val_miou"] = round(100 * miou, 2)
                    if miou > st.best_miou:
                        st.best_miou, st.best_epoch = miou, st.epoch
                        self._save_best(miou, st.epoch)
                    bar.write(
                        f"epoch {st.epoch + 1}/{c.epochs}: loss {entry['loss']}, val mIoU "
                        f"{entry['val_miou']:.2f} (best {100 * st.best_miou:.2f} @ {st.best_epoch + 1})"
                    )
                st.history.append(entry)
                st.epoch += 1
                st.batch = 0
                st.epoch_loss_sum, st.epoch_loss_batches = 0.0, 0
                now = time.monotonic()
                st.seconds += now - last_save
                last_save = now
                self.save_state()
            if stopped:  # with this run's handlers still on: a second Ctrl-C must not abort the save
                bar.close()
                st.seconds += time.monotonic() - last_save
                self.save_state()
                if self._stop_signal is not None:
                    why = "signal"
                elif self._stop_requested:
                    why = "request_stop()"
                else:
                    why = "time limit"
                log.info(
                    "stopped (%s) at epoch %d batch %d; resume with --resume %s",
                    why,
                    st.epoch + 1,
                    st.batch,
                    self.state_path,
                )
        except KeyboardInterrupt:  # the Ctrl-C after the answered one
            self._say(f"training abandoned; {self._kept_state()}")
            raise
        finally:
            bar.close()
            for s, h in old_handlers.items():
                restore(s, h)
            self._stop_requested = False  # spent: a later fit (a resume in this process) trains
        return st
