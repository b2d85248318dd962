"""`rtseg eval`: mIoU of a model on a labelled dataset split."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import atomic_write_text
from ..data.datasets import cityscapes, open_dataset
from ..errors import ConfigError
from ..evaluate import LogitsFn, evaluate, fit_classes
from ..models import load_model
from ..paths import check_output
from .common import (
    add_engine_place_args,
    add_model_args,
    engine_place,
    output_file,
    parse_size,
    refuse_overwrites,
    scheduler_flags,
    write_output,
)
from .scheduler_args import add_scheduler_args, check_scheduler_size, given_options, scheduler_from_args

if TYPE_CHECKING:  # the CLI loads the engine package only when a command needs it
    import numpy as np

    from ..engine.base import Engine
    from ..models.base import StagedSegmenter
    from ..schedule import Scheduler

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate mIoU on CamVid or Cityscapes",
        description="Per-class IoU, pixel accuracy and (last line) mIoU over one dataset split.",
    )
    add_model_args(p)
    p.add_argument("--dataset", choices=["camvid", "cityscapes"], required=True)
    p.add_argument("--root", required=True, type=Path, help="dataset folder")
    p.add_argument("--split", default="test")
    p.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="network input WxH (default: the size the weights were trained at)",
    )
    p.add_argument(
        "--labels",
        choices=["auto", "labelTrainIds", "labelIds"],
        default="auto",
        help="Cityscapes ground-truth files to read (default: train ids if present)",
    )
    p.add_argument("--json", type=output_file, default=None, help="also write the report as JSON")
    p.add_argument("--no-progress", action="store_true")
    add_engine_args(p)
    p.add_argument(
        "--sequence",
        action="store_true",
        help="the split is one video in file order (CamVid val): run it through --scheduler and "
        "report mIoU, keyframe ratio and throughput",
    )
    p.add_argument(
        "--compare-every",
        action="store_true",
        help="with --sequence: also run every frame through the full model first and report "
        "the agreement (mIoU of the scheduled labels against the per-frame labels)",
    )
    p.set_defaults(scheduling=add_scheduler_args(p, default="every"))
    p.set_defaults(func=run)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    from ..engine.backends import ALL_PRECISIONS, BACKENDS

    p.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default="torch",
        help="inference engine (default: torch, the reference)",
    )
    p.add_argument(
        "--precision",
        choices=list(ALL_PRECISIONS),
        default="fp32",
        help="int8 uses the calibration from `rtseg calibrate` (see --calibration)",
    )
    add_engine_place_args(p)


def load_engine_from_args(
    args: argparse.Namespace, model: str | StagedSegmenter, size: tuple[int, int]
) -> Engine:
    """The engine --backend/--precision/--device/--calibration/--engine-dir describe, at ``size``."""
    from ..engine import load

    return load(
        model,
        backend=args.backend,
        precision=args.precision,
        **engine_place(args),
        input_size=size,
    )


def engine_logits_fn(engine: Engine) -> LogitsFn:
    """Logits through the engine (normalisation in-graph), as the torch tensor ``evaluate`` expects."""
    import torch

    def logits(image: np.ndarray) -> torch.Tensor:
        _, out = engine.run(image, logits=True)
        return out.cpu() if isinstance(out, torch.Tensor) else torch.from_numpy(out)

    return logits


def _scheduling_options(args: argparse.Namespace) -> list[str]:
    """The keyframe-scheduling options given, as typed: plain eval runs every image through the
    full model, so any of them would be ignored there without a word."""
    return given_options(args.scheduling, args) + (["--compare-every"] if args.compare_every else [])


def run(args: argparse.Namespace) -> int:
    check_output(args.json, "--json")
    outputs = [("--json", args.json)]
    # The dataset's own files are checked once it is open: they may be links to files elsewhere.
    refuse_overwrites(
        outputs, [("--weights", args.weights), ("--calibration", args.calibration)], [("--root", args.root)]
    )
    if not args.sequence and (given := _scheduling_options(args)):
        raise ConfigError(
            f"{', '.join(given)}: keyframe scheduling applies to a video, and plain eval runs every "
            "image through the full model: add --sequence (the split in file order) or drop "
            f"{'it' if len(given) == 1 else 'them'}"
        )
    if args.sequence and args.compare_every and args.scheduler == "every":
        raise ConfigError(
            "--compare-every compares a schedule with every frame through the full model, but "
            "--scheduler is every (the default): there is nothing to compare; choose --scheduler "
            "clockwork, adaptive or async"
        )
    if args.labels != "auto" and args.dataset != "cityscapes":
        raise ConfigError(f"--labels chooses Cityscapes ground-truth files; {args.dataset} has one kind")
    # before the model, the dataset and the engine load: a bad combination of options fails now
    scheduler = scheduler_from_args(args) if args.sequence else None
    model = load_model(args.model, args.weights)
    if args.dataset == "cityscapes":
        dataset = cityscapes(args.root, args.split, labels=args.labels)
    else:
        dataset = open_dataset(args.dataset, args.root, args.split)
    refuse_overwrites(outputs, [("--root", dataset.files)])
    fit_classes(model, dataset, args.dataset, args.weights)
    meta = model.meta
    size = args.size or meta.preprocessing.input_size
    if scheduler is not None:
        check_scheduler_size(scheduler, size)  # a --flow-stride too large for it, before the engine build
        return _run_sequence(args, model, dataset, size, scheduler)
    engine = load_engine_from_args(args, model, size)
    report = evaluate(
        engine_logits_fn(engine),
        dataset,
        classes=meta.classes,
        input_size=size,
        interpolation=meta.preprocessing.interpolation,
        total=len(dataset),
        progress=not args.no_progress,
        description=f"{meta.model} {args.dataset}/{args.split}",
    )
    print(report.format())
    if args.json:
        payload = {
            "model": meta.model,
            "dataset": args.dataset,
            "split": args.split,
            "input_size": list(size),
            "backend": engine.info.backend,
            "precision": engine.info.precision,
            **report.to_dict(),
        }
        _write_json(args.json, payload)
    return 0


def _write_json(path: Path, payload: dict) -> None:
    """Written whole or not at all, after the report is printed, so a failure loses nothing."""
    write_output(path, "--json", lambda p: atomic_write_text(p, json.dumps(payload, indent=2)))


def _note_label_resize(output: tuple[int, int], label_shape: tuple[int, ...]) -> None:
    """Say once that --sequence scores labels, not logits, when that changes the score: the
    scheduler's labels are resized nearest to the label maps, where plain eval upsamples logits."""
    (w, h), (label_h, label_w) = output, label_shape[:2]
    if (w, h) != (label_w, label_h):
        print(
            f"note: --sequence scores the scheduler's {w}x{h} labels (the engine's output) resized "
            f"nearest-neighbour to the {label_w}x{label_h} label maps; plain rtseg eval upsamples "
            "the logits bilinearly, so its mIoU at this input size can differ slightly",
            file=sys.stderr,
        )


def _run_sequence(
    args: argparse.Namespace, model, dataset, size: tuple[int, int], scheduler: Scheduler
) -> int:
    """`--sequence`: the scheduler over the split in file order (keyframe scheduling study)."""
    from ..schedule import make_scheduler
    from ..schedule.sequence import evaluate_sequence

    engine = load_engine_from_args(args, model, size)
    engine.warmup(2)
    _note_label_resize(engine.output_size, dataset[0].label.shape)
    with scheduler_flags():  # as evaluate_sequence would, but naming --flow-stride, not flow_stride
        scheduler.check(engine)
    reference = None
    name = f"{model.meta.model} {args.dataset}/{args.split}"
    if args.compare_every:  # run() refused it with the every scheduler, which it would repeat
        reference = []
        every = evaluate_sequence(
            engine,
            dataset,
            make_scheduler("every"),
            keep_labels=reference,
            progress=not args.no_progress,
            description=f"{name} every",
        )
        print(every.format())
    report = evaluate_sequence(
        engine,
        dataset,
        scheduler,
        reference=reference,
        progress=not args.no_progress,
        description=f"{name} {args.scheduler}",
    )
    print(report.format())
    if args.json:
        payload = {
            "model": model.meta.model,
            "dataset": args.dataset,
            "split": args.split,
            "input_size": list(size),
            "backend": engine.info.backend,
            "precision": engine.info.precision,
            **report.to_dict(),
        }
        _write_json(args.json, payload)
    return 0
