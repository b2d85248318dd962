"""`rtseg train`: train or fine-tune a model on CamVid or Cityscapes, resumably."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import torch

from ..errors import ConfigError
from ..models import list_models
from ..paths import check_output
from .common import output_file, parse_size, positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a model",
        description="Weighted cross-entropy, poly LR, scale/crop/flip augmentation; validates every "
        "--val-every epochs and keeps the best weights in --out. Ctrl-C or --max-minutes "
        "stop cleanly; --resume continues exactly where it stopped.",
    )
    p.add_argument("--model", choices=list_models(), required=True)
    p.add_argument("--dataset", choices=["camvid", "cityscapes"], required=True)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument(
        "--size",
        type=parse_size,
        default=(480, 360),  # rtseg.train.trainer.DEFAULT_SIZE (not imported here: torch-heavy)
        help="crop and input WxH (default 480x360); both sides must be divisible by the model's input "
        "multiple (ICNet's is 32: 480x360 is refused before any data is read, naming the nearest sizes)",
    )
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--weight-decay", type=float, default=2e-4)
    p.add_argument("--scale-range", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"))
    p.add_argument(
        "--class-weight-c", type=float, default=1.10, help="ENet class weights 1/ln(c + p); 0 disables"
    )
    p.add_argument("--val-every", type=int, default=1)
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument(
        "--init",
        default=None,
        help="weights of the same --model to fine-tune from, in their variant (p/q, scale); other "
        "classes: the tensors that fit are loaded (docs/training.md)",
    )
    p.add_argument(
        "--out", type=output_file, default=Path("runs/train/best.pt"), help="best weights (rtseg checkpoint)"
    )
    p.add_argument("--resume", type=Path, default=None, help="training state to continue (OUT.state.pt)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run over an earlier run's --out and OUT.state.pt (deleting them); without "
        "it, or --resume, an existing one is refused",
    )
    p.add_argument("--max-minutes", type=positive_float, default=None, help="stop cleanly after this long")
    p.add_argument(
        "--save-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="write the resumable state at least this often (default 60 s; 0 = every batch)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train import TrainConfig, Trainer, check_out_is_free, read_state

    check_output(args.out, "--out")
    if args.resume is not None and args.overwrite:
        raise ConfigError("--overwrite starts a new run and --resume continues one: pass only one of them")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        model=args.model,
        dataset=args.dataset,
        root=str(args.root),  # made absolute by TrainConfig, as out is
        out=str(args.out),
        size=args.size,
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        scale_range=tuple(args.scale_range),
        class_weight_c=args.class_weight_c,
        train_split=args.train_split,
        val_split=args.val_split,
        val_every=args.val_every,
        seed=args.seed,
        init=args.init,
        device=args.device,
        compile=args.compile,
        save_every_s=args.save_every,
    )
    # A bad resume file is refused before the datasets are read (minutes on Cityscapes).
    saved = read_state(args.resume) if args.resume is not None else None
    if saved is not None:
        saved.check_config(config)
    else:  # and an earlier run's files before them too
        check_out_is_free(config.out, overwrite=args.overwrite, init=config.init)
    trainer = Trainer(config, progress=not args.no_progress, overwrite=args.overwrite)
    if saved is not None:
        trainer.load_state(saved)
    state = trainer.fit(max_seconds=args.max_minutes * 60 if args.max_minutes else None)
    if state.epoch >= config.epochs:
        print(
            f"done: best val mIoU {100 * state.best_miou:.2f} at epoch {state.best_epoch + 1}; "
            f"weights in {config.out}"
        )
    else:
        print(
            f"stopped at epoch {state.epoch + 1}, batch {state.batch}: resume with "
            f"--resume {trainer.state_path}"
        )
    # As for `rtseg run`: Ctrl-C is 130; SIGTERM (a service manager's stop) and --max-minutes are success.
    return 130 if trainer.stop_signal == signal.SIGINT else 0
