"""Turn a training run's best weights into shippable weights with measured metrics attached.

    python -m rtseg.train.package runs/camvid_from_city/best.pt rtseg/assets/espnet_camvid.pt \\
        --dataset camvid --root ../shared/data/camvid

Evaluates the weights on the given splits with the reference protocol (the same code as
``rtseg eval``), records the numbers in the checkpoint's metadata, and writes it as fp16.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..data.datasets import open_dataset
from ..errors import CheckpointError, ConfigError
from ..evaluate import evaluate, fit_classes, torch_logits_fn
from ..models import get_model, read_checkpoint, save_checkpoint
from ..paths import check_output


def package(source: Path, target: Path, *, dataset: str, root: Path, splits: list[str]) -> dict[str, float]:
    loaded = read_checkpoint(source)
    if loaded.meta is None:
        raise CheckpointError(
            f"{source}: a plain state dict has no rtseg metadata (model, classes, training recipe); "
            "package the best.pt that rtseg train wrote"
        )
    # The evaluation takes minutes: an output that cannot be written is refused before it.
    check_output(target, "target")
    model = get_model(loaded.meta.model, weights=source)
    # Every split opened first (a missing one is found before minutes of evaluation), and scored
    # in the weights' classes, as `rtseg eval` does: CamVid weights scored on Cityscapes labels
    # compared unrelated ids and stored the numbers as "cityscapes/val".
    data_sets = {split: open_dataset(dataset, root, split) for split in splits}
    for data in data_sets.values():
        fit_classes(model, data, dataset, source)
    meta = model.meta
    metrics = dict(meta.metrics)
    results = {}
    for split, data in data_sets.items():
        report = evaluate(
            torch_logits_fn(model, meta.preprocessing),
            data,
            classes=meta.classes,
            input_size=meta.preprocessing.input_size,
            interpolation=meta.preprocessing.interpolation,
            total=len(data),
            description=split,
        )
        results[split] = 100 * report.scores.miou
        metrics[f"{dataset}/{split}"] = {
            "miou": round(100 * report.scores.miou, 2),
            "pixel_accuracy": round(100 * report.scores.pixel_accuracy, 2),
            "by": "rtseg eval (torch, reference protocol)",
        }
    provenance = dict(meta.provenance)
    init = provenance.get("recipe", {}).get("init")
    if init and "initialised_from" not in provenance:  # runs from before the trainer recorded it
        try:
            provenance["initialised_from"] = {
                "file": init,
                **get_model(meta.model, weights=init).meta.provenance,
            }
        except CheckpointError:
            provenance["initialised_from"] = {"file": init}
    try:
        save_checkpoint(
            target, model.state_dict(), replace(meta, metrics=metrics, provenance=provenance), half=True
        )
    except OSError as exc:  # a disk that filled during the evaluation: keep its numbers in the message
        scores = ", ".join(f"{split} mIoU {miou:.2f}" for split, miou in results.items())
        raise ConfigError(
            f"target {target}: cannot write it: {exc.strerror or exc} (nothing written; the scores were "
            f"{scores})"
        ) from None
    return results


PROG = "python -m rtseg.train.package"


def main(argv: list[str] | None = None) -> int:
    """The packaging command line; an RtsegError (a missing split, plain or training-state
    weights) is reported in one line as the ``rtseg`` command reports it, not in a traceback."""
    from ..cli import run_reported

    return run_reported(PROG, lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    # __doc__ is None under python -OO
    p = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").partition("\n")[0])
    p.add_argument("source", type=Path)
    p.add_argument("target", type=Path)
    p.add_argument("--dataset", default="camvid")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--splits", nargs="+", default=["val", "test"])
    args = p.parse_args(argv)
    results = package(args.source, args.target, dataset=args.dataset, root=args.root, splits=args.splits)
    for split, miou in results.items():
        print(f"{split}: mIoU {miou:.2f}")
    print(f"wrote {args.target} ({args.target.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
