"""`rtseg models`: the registry, with parameters, measured per-stage FLOP shares and the authors'
published numbers."""

from __future__ import annotations

import argparse
import math
import textwrap

import torch

from ..engine.graphs import head_low_inputs
from ..errors import CheckpointError, ConfigError
from ..models import DEFAULT_MODEL, DEFAULT_WEIGHTS, get_model, get_spec, list_models
from ..models.base import StagedSegmenter, param_count
from ..models.checkpoint import read_checkpoint
from ..models.flops import stage_flops
from .common import parse_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list models, their metadata and stage FLOP shares")
    p.add_argument("--flops", action="store_true", help="measure FLOPs per stage (takes a few seconds each)")
    p.add_argument("--size", type=parse_size, default=None, help="input WxH for --flops (default 1024x512)")
    p.add_argument(
        "--published",
        action="store_true",
        help="list the mIoU and speed the authors published, with their source (and a note where "
        "the published network is not rtseg's), instead",
    )
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.set_defaults(func=run)


def _published_rows() -> list[dict[str, str]]:
    rows = []
    for name in list_models():
        for r in get_spec(name).published:
            rows.append(
                {
                    "model": name,
                    "dataset": f"{r.dataset} {r.split}",
                    "mIoU": f"{r.miou:.1f}",
                    "at": f"{r.resolution[0]}x{r.resolution[1]}",
                    "FPS": "" if r.fps is None else f"{r.fps:g}",
                    "hardware": r.hardware or "",
                    "source": r.source,
                    "note": r.note,
                }
            )
    return rows


def _print(rows: list[dict[str, str]], markdown: bool) -> None:
    keys = list(rows[0])
    if markdown:
        print("| " + " | ".join(keys) + " |")
        print("|" + "---|" * len(keys))
        for r in rows:
            print("| " + " | ".join(r[k] for k in keys) + " |")
    else:
        widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
        print("  ".join(k.ljust(widths[k]) for k in keys).rstrip())
        for r in rows:
            print("  ".join(r[k].ljust(widths[k]) for k in keys).rstrip())


def run(args: argparse.Namespace) -> int:
    if args.size is not None and not args.flops:
        raise ConfigError("--size is the input size of --flops: add --flops, or leave --size out")
    if args.published:
        if args.flops:
            raise ConfigError("--published lists the authors' numbers; --flops measures: use one")
        _print(_published_rows(), args.markdown)
        return 0
    models = {name: get_model(name) for name in list_models()}
    size = args.size or (1024, 512)
    # Every model's input multiple is checked before anything is measured: icnet-r18 failed the
    # whole command at 480x360 after the models before it had taken ~15 s.
    skipped = {
        name: f"skipped: needs a size divisible by {m}"
        for name, model in models.items()
        if (m := model.stage_spec.input_multiple) and (size[0] % m or size[1] % m)
    }
    if args.flops and len(skipped) == len(models):
        needs = ", ".join(f"{n} {model.stage_spec.input_multiple}" for n, model in models.items())
        raise ConfigError(
            f"--size: no model takes {size[0]}x{size[1]}; each needs a size divisible by its "
            f"input multiple ({needs})"
        )
    rows = []
    for name, model in models.items():
        spec = get_spec(name)
        w, h = spec.default_input_size
        row = {
            "model": name,
            "params (M)": f"{param_count(model) / 1e6:.2f}",
            "default input": f"{w}x{h} {spec.channel_order}",
            "low -> head reads": _head_reads(model),
            "cached deep": ", ".join(f"{f.name}({f.channels})/{f.stride}" for f in model.stage_spec.deep),
        }
        if args.flops:
            row.update(_flop_columns(model, size) if name not in skipped else dict.fromkeys(_FLOP_KEYS, "-"))
            if skipped:
                row["note"] = skipped.get(name, "")
        rows.append(row)
    _print(rows, args.markdown)
    print("\n" + textwrap.fill(FRAMES_NOTE, width=100))
    print("\n" + textwrap.fill(_shipped_note(), width=100))
    return 0


# "1024x512 RGB" read as "give it RGB": RGB frames cost the shipped model 15 mIoU, silently. And
# "network input ... trained on" read as what the shipped ESPNet runs at: it runs at 480x360.
FRAMES_NOTE = (
    "default input: the registry entry's default size (the authors' Cityscapes setting) and channel "
    "order, which a network built without weights carries; rtseg checkpoints and the authors' "
    "catalogued ones carry their own input and run at it. Frames are given as HxWx3 uint8 BGR "
    "(OpenCV order) for every model, at any size; rtseg resizes and reorders them. From RGB (ROS "
    "rgb8, PIL, imageio): image[..., ::-1] or "
    "cv2.cvtColor(image, cv2.COLOR_RGB2BGR)."
)


def _shipped_note() -> str:
    """The shipped default weights and the input they run at, as their own metadata says."""
    where = DEFAULT_WEIGHTS.relative_to(DEFAULT_WEIGHTS.parents[2])  # rtseg/assets/...
    try:
        meta = read_checkpoint(DEFAULT_WEIGHTS).meta
    except CheckpointError as exc:
        return f"shipped default weights ({DEFAULT_MODEL}, {where}): cannot be read: {exc}"
    if meta is None:
        return f"shipped default weights ({DEFAULT_MODEL}, {where}): no metadata"
    w, h = meta.preprocessing.input_size
    return (
        f"shipped default weights: {meta.model} {where} ({meta.classes.name}, {len(meta.classes)} "
        f"classes), which rtseg run and rtseg.Segmenter() run at {w}x{h} "
        f"{meta.preprocessing.channel_order} unless given another input size."
    )


def _head_reads(model: StagedSegmenter) -> str:
    """The low features ``forward_head`` reads (name/stride), traced at a small input: StageSpec.low
    also lists those only forward_deep reads (ESPNet's image_s4), and ESPNet-C's head reads none."""
    k = model.stage_spec.input_multiple
    side = k * math.ceil(32 / k)  # about 32 px
    # One thread: tensors this small gain nothing from more, and on a busy 2-core machine the
    # intra-op threads' waits took the seven models from 0.1 s to 3 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            read = set(head_low_inputs(model.eval(), (side, side)))
    finally:
        torch.set_num_threads(threads)
    return ", ".join(f"{f.name}/{f.stride}" for f in model.stage_spec.low if f.name in read) or "none"


_FLOP_KEYS = ("GFLOPs", "low %", "deep %", "head %", "low+head %")


def _flop_columns(model: StagedSegmenter, size: tuple[int, int]) -> dict[str, str]:
    flops = stage_flops(model, size)
    values = (
        flops.total / 1e9,
        100 * flops.share("low"),
        100 * flops.share("deep"),
        100 * flops.share("head"),
        100 * flops.per_frame_share,
    )
    return {k: f"{v:.{2 if k == 'GFLOPs' else 1}f}" for k, v in zip(_FLOP_KEYS, values, strict=True)}
