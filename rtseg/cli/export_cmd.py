"""`rtseg export`: build (or check) the engine artifacts for a model, weights, size and backend."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..models import load_model
from .common import add_engine_place_args, add_model_args, engine_place, parse_size


def register(sub: argparse._SubParsersAction) -> None:
    from ..engine.backends import ALL_PRECISIONS, BACKENDS, EXPORTERS, INT8_MODES

    p = sub.add_parser(
        "export",
        help="export per-stage engine artifacts into the engine cache",
        description="Writes the low/deep/head artifacts for one backend into the engine cache "
        "(default: the checkout's engines/, else ~/.cache/rtseg/engines; $RTSEG_ENGINE_DIR or "
        "--engine-dir override it). Names carry the model, weights hash, size, precision, backend, "
        "device and library version; each file has a sidecar JSON. Existing valid artifacts are "
        "reused; stale or corrupt ones are rebuilt. With --backend auto the backends are timed and "
        "the choice is stored.",
    )
    add_model_args(p)
    p.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="engine input WxH (default: the size the weights were trained at)",
    )
    p.add_argument("--backend", choices=[b for b in BACKENDS if b != "torch"], default="onnxruntime")
    p.add_argument("--precision", choices=list(ALL_PRECISIONS), default="fp32")
    add_engine_place_args(p)
    p.add_argument(
        "--int8-mode",
        choices=list(INT8_MODES),
        default=INT8_MODES[0],
        help="tensorrt int8: explicit QDQ graph, or implicit entropy calibration",
    )
    p.add_argument(
        "--exporter",
        choices=list(EXPORTERS),
        default=EXPORTERS[0],
        help="ONNX exporter (auto: TorchScript, falling back to dynamo where it fails)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="also compare the engine with the torch reference on a random frame (int8: on a few "
        "--calibration frames)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine import ArtifactCache, load
    from ..engine.backends import BACKEND_OPTIONS, INT8_MODES

    # Writing artifacts is the command's whole job: with an unwritable cache, auto would skip
    # every exported backend, pick torch and exit 0 having written nothing.
    ArtifactCache(args.engine_dir).check_writable()
    place = engine_place(args)  # its checks before the model loads
    net = load_model(args.model, args.weights)
    # auto passes each option on to the candidates that take it (auto.options_for).
    takes = BACKEND_OPTIONS.get(args.backend, ())
    options = {"exporter": args.exporter} if args.backend == "auto" or "exporter" in takes else {}
    if "int8_mode" in takes:
        options["int8_mode"] = args.int8_mode
    elif args.int8_mode != INT8_MODES[0]:
        raise ConfigError("--int8-mode applies to --backend tensorrt")
    engine = load(
        net,
        backend=args.backend,
        precision=args.precision,
        **place,
        input_size=args.size,  # None: the weights' size, which load() names if unusable
        **options,
    )
    info = engine.info
    print(
        f"{info.model} {info.input_size[0]}x{info.input_size[1]} {info.backend} {info.precision} "
        f"on {info.device} ({info.library})"
    )
    for note in info.notes:
        print(f"  {note}")
    for path in info.artifacts:
        sidecar = Path(path + ".json")
        built = json.loads(sidecar.read_text())["built_at"] if sidecar.is_file() else "?"
        print(f"  {path}  (built {built})")
    if args.verify:
        _verify(engine, net, engine.input_size, args.precision, args.calibration)
    return 0


# Calibration frames a --verify of an int8 engine compares on: a few, spread over the list.
VERIFY_FRAMES = 4


def _verify(engine, net, size: tuple[int, int], precision: str, calibration: Path | None) -> None:
    from ..engine import TorchEngine

    reference = TorchEngine(net, input_size=size)
    frames, where, note = _verify_frames(size, precision, calibration)
    agree = pixels = 0
    error, low, high = 0.0, np.inf, -np.inf
    for image in frames:
        ref_labels, ref_logits = reference.run(image, logits=True)
        labels, logits = engine.run(image, logits=True)
        ref = ref_logits.numpy()
        out = logits.float().cpu().numpy() if hasattr(logits, "cpu") else np.asarray(logits, dtype=np.float32)
        agree += int(np.count_nonzero(labels == ref_labels))
        pixels += labels.size
        error = max(error, float(np.abs(out - ref).max()))
        low, high = min(low, float(ref.min())), max(high, float(ref.max()))
    span = (high - low) or 1.0
    print(
        f"  verify: label agreement {100 * agree / pixels:.3f} %, "
        f"max |logit error| {error:.3g} ({error / span:.2e} of the logit range){where}"
    )
    if note:
        print(f"  note: {note}")


def _verify_frames(
    size: tuple[int, int], precision: str, calibration: Path | None
) -> tuple[list[np.ndarray], str, str | None]:
    """The frames to compare on, where they come from (for the verify line) and a note. A random
    frame serves fp32 and fp16, whose logits follow the reference's anywhere; int8 is calibrated on
    real frames, and on noise, whose logits are near-ties, a few int8 steps flip a quarter of the
    labels (77 % agreement for an engine that agrees 97-98 % on real frames): it compares on some of
    its calibration frames when the list is at hand."""
    from ..engine import CalibrationList
    from ..errors import DatasetError

    w, h = size
    noise = [np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)]
    if precision != "int8":
        return noise, "", None
    meaningless = "label agreement on random noise says little for int8 (its logits there are near-ties)"
    if calibration is None:
        return noise, " on a random frame", f"{meaningless}; pass --calibration LIST to verify on real frames"
    listed = CalibrationList.load(calibration)
    count = min(VERIFY_FRAMES, len(listed))
    entries = tuple(listed.entries[int(i * len(listed) / count)] for i in range(count))
    try:
        frames = list(CalibrationList(listed.kind, listed.source, entries).frames(size))
    except DatasetError as exc:
        return noise, " on a random frame", f"{meaningless}; the calibration frames cannot be read ({exc})"
    what = "frames" if listed.kind == "images" else f"frames of {listed.source.name}"
    where = f" on {count} of the {len(listed)} calibration {what} in {calibration} ({', '.join(entries)})"
    return frames, where, None
