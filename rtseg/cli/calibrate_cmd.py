"""`rtseg calibrate`: sample frames, write the list, quantise to int8 (QDQ), and where TensorRT
is present, write its entropy-calibration cache."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..atomic import atomic_write_bytes
from ..errors import BackendUnavailableError, ConfigError
from ..models import load_model
from ..paths import check_output
from .common import (
    add_model_args,
    output_file,
    parse_size,
    refuse_overwrites,
    write_output,
)

log = logging.getLogger(__name__)
TARGETS = ("cpu", "tensorrt")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="INT8 calibration: a frame list, QDQ int8 graphs, a TensorRT calibration cache",
        description="Samples --num frames evenly from an image folder or a video, writes their list to "
        "calibration/ (or --list), and quantises every stage with ONNX Runtime static quantisation: "
        "'cpu' (uint8 activations, for onnxruntime and openvino) and 'tensorrt' (symmetric int8 for "
        "TensorRT's explicit quantisation). Where TensorRT and a GPU are present it also builds an "
        "implicitly calibrated engine, which writes the IInt8EntropyCalibrator2 cache to "
        "calibration/cache/.",
    )
    add_model_args(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of calibration images (searched recursively)")
    source.add_argument("--video", type=Path, help="video to take calibration frames from")
    p.add_argument("--num", type=int, default=64, help="number of frames (default: 64)")
    p.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="engine input WxH (default: the size the weights were trained at)",
    )
    p.add_argument(
        "--list",
        type=output_file,
        default=None,
        help="where to write the frame list (default: calibration/<model>-<source>-<num>.txt)",
    )
    p.add_argument(
        "--targets",
        nargs="+",
        choices=TARGETS,
        default=list(TARGETS),
        help="int8 flavours to build (default: both)",
    )
    p.add_argument("--device", default="cuda", help="GPU for the TensorRT entropy cache (default: cuda)")
    p.add_argument("--engine-dir", type=Path, default=None, help="engine cache folder")
    p.set_defaults(func=run)


def _default_list(model: str, source: Path, num: int) -> Path:
    from ..engine.calibration import default_calibration_dir

    parts = [q for q in (source.parent.name, source.stem) if q]
    return default_calibration_dir() / f"{model}-{'-'.join(parts)}-{num}.txt"


def run(args: argparse.Namespace) -> int:
    from ..engine.cache import ArtifactCache
    from ..engine.calibration import CalibrationList
    from ..engine.onnx_engines import int8_stages
    from ..engine.onnx_export import ensure_onnx

    if args.num <= 0:
        raise ConfigError(f"--num must be positive, got {args.num}")
    net = load_model(args.model, args.weights)
    size = args.size or net.meta.preprocessing.input_size
    if args.images is not None:
        calibration = CalibrationList.from_images(args.images, args.num)
        source = args.images.resolve()
    else:
        calibration = CalibrationList.from_video(args.video, args.num)
        source = args.video.resolve()
    list_path = args.list or _default_list(net.meta.model, source, args.num)
    frames = [calibration.source / entry for entry in calibration.entries] if args.images else args.video
    refuse_overwrites(
        [("--list", list_path)],
        [("--weights", args.weights), ("--images" if args.images else "--video", frames)],
    )
    other = _another_sources_list(list_path, calibration)
    if other is not None and args.list is None:
        raise ConfigError(
            f"{list_path} already holds the calibration list of {other}; "
            f"pass --list to name the list of {calibration.source}"
        )
    if other is not None:
        log.warning(
            "--list %s held the calibration list of %s: replaced (its int8 builds stay in "
            "the engine cache, named by that list's id)",
            list_path,
            other,
        )
    check_output(list_path, "--list")
    previous = list_path.read_bytes() if list_path.is_file() else None
    write_output(list_path, "--list", calibration.save)
    built = {}
    try:
        cache = ArtifactCache(args.engine_dir)
        fp32 = ensure_onnx(net, size, cache)
        for target in args.targets:
            built[target] = int8_stages(net, fp32, cache, calibration, flavour=target)
    except BaseException:
        # A frame that cannot be read, or Ctrl-C: no list is left behind without its graphs, and
        # a list that was there before (whose int8 builds still exist) is put back as it was.
        if previous is None:
            list_path.unlink(missing_ok=True)
        else:
            atomic_write_bytes(list_path, previous)
        raise
    print(f"calibration list: {list_path} ({len(calibration)} frames, id {calibration.id})")
    for target, stages in built.items():
        print(f"int8 QDQ graphs for {target}:")
        for stage, path in stages.files.items():
            scheme = stages.sidecars[stage].get("quantization", {}).get("scheme", "?")
            print(f"  {stage}: {path}  (scheme {scheme})")
    if "tensorrt" in args.targets:
        _entropy_cache(args, net, size, cache, calibration, list_path)
    else:
        print("TensorRT entropy cache: skipped (tensorrt is not in --targets)")
    return 0


def _another_sources_list(path: Path, calibration) -> str | None:
    """The source of the calibration list at ``path`` when it is another source's. The default name
    holds only the source's folder and name, so two sources can share it: replacing the other's
    list unasked would orphan the int8 engines built from it."""
    from ..engine.calibration import CalibrationList

    if not path.is_file():
        return None
    try:
        existing = CalibrationList.load(path)
    except ConfigError:
        return None  # not a readable list: saving over it loses nothing
    return str(existing.source) if existing.source != calibration.source else None


def _entropy_cache(args, net, size, cache, calibration, list_path: Path) -> None:
    from ..engine import load

    try:
        engine = load(
            net,
            backend="tensorrt",
            precision="int8",
            device=args.device,
            input_size=size,
            engine_dir=cache.directory,
            calibration=calibration,
            int8_mode="calibrator",
        )
    except BackendUnavailableError as exc:
        print(
            f"TensorRT entropy cache: skipped ({exc}); it is written by the first "
            "`rtseg export --backend tensorrt --precision int8 --int8-mode calibrator "
            f"--calibration {list_path}` on a GPU machine"
        )
        return
    print("TensorRT entropy-calibrated engine (its calibration cache is in calibration/cache/):")
    for path in engine.info.artifacts:
        print(f"  {path}")
