"""`rtseg models`: the registry, with parameters, measured per-stage FLOP shares and the authors'
published numbers."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..models import get_model, get_spec, list_models
from ..models.base import param_count
from ..models.flops import stage_flops
from .common import parse_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list models, their metadata and stage FLOP shares")
    p.add_argument("--flops", action="store_true", help="measure FLOPs per stage (takes a few seconds each)")
    p.add_argument("--size", type=parse_size, default=None, help="input WxH for --flops (default 1024x512)")
    p.add_argument(
        "--published",
        action="store_true",
        help="list the mIoU and speed the authors published, with their source, instead",
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
    rows = []
    for name in list_models():
        spec = get_spec(name)
        model = get_model(name)
        row = {
            "model": name,
            "params (M)": f"{param_count(model) / 1e6:.2f}",
            "input": f"{spec.default_input_size[0]}x{spec.default_input_size[1]} {spec.channel_order}",
            "low -> head reads": ", ".join(f"{f.name}/{f.stride}" for f in model.stage_spec.low),
            "cached deep": ", ".join(f"{f.name}({f.channels})/{f.stride}" for f in model.stage_spec.deep),
        }
        if args.flops:
            w, h = args.size or (1024, 512)
            m = model.stage_spec.input_multiple
            if w % m or h % m:
                raise ConfigError(f"--size: {name} needs a size divisible by {m}, got {w}x{h}")
            flops = stage_flops(model, (w, h))
            row.update(
                {
                    "GFLOPs": f"{flops.total / 1e9:.2f}",
                    "low %": f"{100 * flops.share('low'):.1f}",
                    "deep %": f"{100 * flops.share('deep'):.1f}",
                    "head %": f"{100 * flops.share('head'):.1f}",
                    "low+head %": f"{100 * flops.per_frame_share:.1f}",
                }
            )
        rows.append(row)
    _print(rows, args.markdown)
    return 0
