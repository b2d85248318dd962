"""The one flat model registry: names -> builders plus their metadata as data."""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..data.labels import CITYSCAPES, IGNORE_INDEX, MAX_CLASSES, ClassSet, numbered_classes
from ..data.preprocess import IMAGENET_RGB, Preprocessing
from ..errors import CheckpointError, ConfigError, InputTypeError
from .base import StagedSegmenter
from .catalog import (
    ESPNET_CITYSCAPES_INPUT,
    ESPNETV2_CITYSCAPES_INPUT,
    KNOWN_CHECKPOINTS,
    KnownCheckpoint,
    find_known,
)
from .checkpoint import (
    SUBNORMAL_REASON,
    LoadedCheckpoint,
    WeightsMeta,
    check_finite,
    check_state_dict_fits,
    plain_metadata,
    read_checkpoint,
    tensors_sha256,
    without_subnormals,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedResult:
    """A number the authors published, with where it comes from."""

    dataset: str  # "cityscapes" or "camvid"
    split: str  # "test" or "val"
    miou: float
    resolution: tuple[int, int]  # (width, height) of the speed/quality measurement
    source: str
    fps: float | None = None
    hardware: str | None = None
    # How the published network differs from rtseg's of that name, where it does: shown beside the
    # number, which is otherwise read as rtseg's network's.
    note: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.miou < 100:
            raise ValueError(f"PublishedResult.miou must be a percentage in (0, 100), got {self.miou}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"PublishedResult.fps must be positive, got {self.fps}")


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry. ``builder(num_outputs=..., **config)`` makes the network."""

    name: str
    builder: Callable[..., StagedSegmenter]
    paper: str
    classes: ClassSet
    preprocessing: Preprocessing  # default for training from scratch; weights carry their own
    default_config: Mapping[str, Any] = field(default_factory=dict)
    void_outputs: int = 0  # extra never-predicted output channels in the authors' checkpoints
    published: tuple[PublishedResult, ...] = ()
    config_from_state_dict: Callable[[Mapping[str, torch.Tensor]], dict[str, Any]] | None = None
    options: tuple[str, ...] = ()  # the builder's keyword options a get_model caller may set

    @property
    def default_input_size(self) -> tuple[int, int]:
        return self.preprocessing.input_size

    @property
    def channel_order(self) -> str:
        return self.preprocessing.channel_order


def _espnet(**kw: Any) -> StagedSegmenter:
    from .espnet import ESPNet

    return ESPNet(**kw)


def _espnet_c(**kw: Any) -> StagedSegmenter:
    from .espnet import ESPNetC

    return ESPNetC(**kw)


def _espnetv2(**kw: Any) -> StagedSegmenter:
    from .espnetv2 import ESPNetV2

    return ESPNetV2(**kw)


def _enet(**kw: Any) -> StagedSegmenter:
    from .enet import ENet

    return ENet(**kw)


def _icnet_r18(**kw: Any) -> StagedSegmenter:
    from .icnet import ICNet

    return ICNet(backbone="resnet18", **kw)


def _icnet_r50(**kw: Any) -> StagedSegmenter:
    from .icnet import ICNet

    return ICNet(backbone="resnet50", **kw)


def _deeplabv3plus_mnv2(**kw: Any) -> StagedSegmenter:
    from .deeplabv3plus import DeepLabV3Plus

    return DeepLabV3Plus(**kw)


def _espnet_cfg(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    from .espnet import espnet_config_from_state_dict

    return espnet_config_from_state_dict(dict(state))


def _espnet_c_cfg(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    from .espnet import espnet_c_config_from_state_dict

    return espnet_c_config_from_state_dict(dict(state))


def _espnetv2_cfg(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    from .espnetv2 import espnetv2_config_from_state_dict

    return espnetv2_config_from_state_dict(dict(state))


_CITYSCAPES_IMAGENET = IMAGENET_RGB.with_input_size((2048, 1024))

_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="enet",
        builder=_enet,
        paper="Paszke, Chaurasia, Kim, Culurciello. ENet. arXiv:1606.02147 (2016)",
        classes=CITYSCAPES,
        preprocessing=IMAGENET_RGB.with_input_size((1024, 512)),
        published=(
            # The 76.9 FPS usually quoted beside it is ICNet's tabulation, with no GPU stated for that
            # timing: it is in bench/cityscapes_table.csv with that caveat, not here.
            PublishedResult("cityscapes", "test", 58.3, (1024, 512), "ENet paper"),
            PublishedResult("camvid", "test", 51.3, (480, 360), "ENet paper, Table 4"),
        ),
    ),
    ModelSpec(
        name="icnet-r18",
        builder=_icnet_r18,
        paper="Zhao, Qi, Shen, Shi, Jia. ICNet. ECCV 2018 (arXiv:1704.08545), ResNet-18 backbone",
        classes=CITYSCAPES,
        preprocessing=_CITYSCAPES_IMAGENET,
    ),
    ModelSpec(
        name="icnet-r50",
        builder=_icnet_r50,
        paper="Zhao, Qi, Shen, Shi, Jia. ICNet. ECCV 2018 (arXiv:1704.08545)",
        classes=CITYSCAPES,
        preprocessing=_CITYSCAPES_IMAGENET,
        published=(
            PublishedResult(
                "cityscapes",
                "test",
                69.5,
                (2048, 1024),
                "ICNet paper, Table 7 (fine only)",
                fps=30.3,
                hardware="NVIDIA Titan X (Maxwell)",
            ),
            PublishedResult(
                "camvid",
                "test",
                67.1,
                (960, 720),
                "ICNet paper, Table 9",
                fps=27.8,
                hardware="NVIDIA Titan X (Maxwell)",
            ),
        ),
    ),
    ModelSpec(
        name="deeplabv3plus-mobilenetv2",
        builder=_deeplabv3plus_mnv2,
        paper="Chen, Zhu, Papandreou, Schroff, Adam. DeepLabV3+. ECCV 2018, MobileNetV2 backbone",
        classes=CITYSCAPES,
        preprocessing=_CITYSCAPES_IMAGENET,
        default_config={"output_stride": 16},
        published=(
            PublishedResult(
                "cityscapes",
                "val",
                70.71,
                (2048, 1024),
                "TensorFlow DeepLab model zoo, mobilenetv2_coco_cityscapes_trainfine",
                note="not this network: the zoo's MobileNetV2 models have no ASPP and no decoder; "
                "rtseg's has both (docs/models.md)",
            ),
        ),
        options=("output_stride",),
    ),
    ModelSpec(
        name="espnet",
        builder=_espnet,
        paper="Mehta, Rastegari, Caspi, Shapiro, Hajishirzi. ESPNet. ECCV 2018",
        classes=CITYSCAPES,
        preprocessing=ESPNET_CITYSCAPES_INPUT,
        default_config={"p": 2, "q": 8, "skip_channels": 19},
        void_outputs=1,
        published=(
            PublishedResult(
                "cityscapes",
                "test",
                60.3,
                (1024, 512),
                "ESPNet paper, Table 1",
                fps=112.0,
                hardware="NVIDIA Titan X (Pascal)",
            ),
            PublishedResult("camvid", "test", 55.6, (480, 360), "ESPNet authors' README (55.64)"),
        ),
        config_from_state_dict=_espnet_cfg,
        options=("p", "q", "skip_channels", "width"),
    ),
    ModelSpec(
        name="espnet-c",
        builder=_espnet_c,
        paper="Mehta et al. ESPNet (ECCV 2018): the encoder-only ESPNet-C",
        classes=CITYSCAPES,
        preprocessing=ESPNET_CITYSCAPES_INPUT,
        default_config={"p": 2, "q": 8},
        void_outputs=1,
        config_from_state_dict=_espnet_c_cfg,
        options=("p", "q"),
    ),
    ModelSpec(
        name="espnetv2",
        builder=_espnetv2,
        paper="Mehta, Rastegari, Shapiro, Hajishirzi. ESPNetv2. CVPR 2019",
        classes=CITYSCAPES,
        preprocessing=ESPNETV2_CITYSCAPES_INPUT,
        default_config={"scale": 2.0},
        void_outputs=1,
        published=(
            # The released checkpoint's numbers (those of bench/cityscapes_table.csv), not the paper's
            # own training run.
            PublishedResult("cityscapes", "val", 66.4, (1024, 512), "EdgeNets README, s=2.0"),
            PublishedResult("cityscapes", "test", 66.2, (1024, 512), "EdgeNets README, s=2.0"),
        ),
        config_from_state_dict=_espnetv2_cfg,
        options=("scale",),
    ),
)

_REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _MODELS}

# The model rtseg ships trained weights for (see rtseg/assets and `rtseg train`).
DEFAULT_MODEL = "espnet"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "espnet_camvid.pt"


def list_models() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(_REGISTRY)}") from None


def default_meta(name: str, *, num_classes: int | None = None, **config: Any) -> WeightsMeta:
    """Metadata for freshly initialised weights of ``name``."""
    spec = get_spec(name)
    classes = spec.classes
    if num_classes is not None and num_classes != len(classes):
        classes = numbered_classes(num_classes)
    return WeightsMeta(
        model=name,
        config={**spec.default_config, **config},
        classes=classes,
        num_outputs=len(classes),
        preprocessing=spec.preprocessing,
        provenance={"source": "random initialisation"},
    )


UNKNOWN_SOURCE = "unrecognised plain state dict"


def _meta_for_plain(
    spec: ModelSpec,
    ckpt: LoadedCheckpoint,
    num_classes: int | None,
    catalog: Iterable[KnownCheckpoint] = KNOWN_CHECKPOINTS,
) -> WeightsMeta:
    """Metadata for a plain state dict: the catalog's for an authors' release, else the spec's.

    The tensors' digest is what identifies a release: a re-saved or DataParallel copy has other
    file bytes, and took Cityscapes preprocessing and numbered classes (95 % -> 30 % pixel
    accuracy on CamVid). The file hash is only tried first because it is cheaper to match.
    """
    catalog = tuple(catalog)
    known = find_known(ckpt.sha256, catalog) or find_known(tensors_sha256(ckpt.state_dict), catalog)
    config = dict(spec.default_config)
    if spec.config_from_state_dict is not None:
        # Not this architecture if it raises: the key comparison below says exactly how.
        with contextlib.suppress(KeyError, IndexError, ValueError, CheckpointError):
            config = {**config, **spec.config_from_state_dict(ckpt.state_dict)}
    inferred_outputs = int(config.pop("num_outputs", 0))
    if known is not None:
        if known.model != spec.name:
            raise CheckpointError(
                f"{ckpt.path} holds {known.model!r} weights ({known.filename}), not {spec.name!r}"
            )
        return WeightsMeta(
            model=spec.name,
            config=config,
            classes=known.classes,
            num_outputs=known.num_outputs,
            preprocessing=known.preprocessing,
            provenance={
                **known.provenance,
                "file": known.filename,
                "sha256": ckpt.sha256,
                "tensors_sha256": known.tensors_sha256,
                **({"copy_of": known.sha256} if ckpt.sha256 != known.sha256 else {}),
            },
            metrics=known.metrics,
        )
    # Families without a shape reader (ENet, ICNet, DeepLabV3+) are rtseg's own networks, which have
    # no void outputs: num_classes says how many outputs the file has (checked against its shapes).
    num_outputs = inferred_outputs or num_classes or len(spec.classes) + spec.void_outputs
    # The authors' files end in void channels; rtseg's own networks (get_model) have none. The
    # shapes cannot tell them apart: a plain state dict of get_model(name) (the registry's classes)
    # or one loaded with num_classes=N reads back as it was built; any other count is taken to end
    # in the authors' void channels, which get_model's warning says (with the num_classes= fix).
    if num_classes is not None and num_outputs in (num_classes, num_classes + spec.void_outputs):
        real = num_classes
    elif num_outputs == len(spec.classes):
        real = num_outputs
    else:
        real = num_outputs - spec.void_outputs
    classes = spec.classes if real == len(spec.classes) else numbered_classes(real)
    return WeightsMeta(
        model=spec.name,
        config=config,
        classes=classes,
        num_outputs=num_outputs,
        preprocessing=spec.preprocessing,
        provenance={"file": str(ckpt.path), "sha256": ckpt.sha256, "source": UNKNOWN_SOURCE},
    )


def _void_note(num_outputs: int, void: int) -> str:
    """Why a plain state dict of get_model(name, num_classes=N) reads back one class short."""
    which = "last output channel was" if void == 1 else f"last {void} output channels were"
    return (
        f". Its {which} taken as void (never predicted), as in the authors' releases, leaving "
        f"{num_outputs - void} classes of {num_outputs} outputs; if every output is a class "
        f"(a network built by get_model(num_classes={num_outputs})), pass num_classes={num_outputs} "
        "to get_model; the command line reads the class count from an rtseg checkpoint"
    )


def get_model(
    name: str,
    *,
    num_classes: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    **config: Any,
) -> StagedSegmenter:
    """Build model ``name``; with ``weights``, load them strictly and attach their metadata.

    The returned module is in eval mode and carries ``.meta`` (a ``WeightsMeta``): classes,
    palette, preprocessing and provenance travel with the network.
    """
    spec = get_spec(name)
    unknown = [key for key in config if key not in spec.options]
    if unknown:
        raise ConfigError(
            f"{name} has no option {unknown[0]!r}; it takes {', '.join(spec.options) or 'none'} "
            "(num_classes= sets the outputs, weights= the checkpoint; other models: list_models())"
        )
    # NumPy values (read from an array or a sweep) as Python ones: meta.config is saved with the
    # weights, and torch.load(weights_only=True) refuses NumPy objects.
    config = plain_metadata(dict(config), f"{name} options")
    if num_classes is not None:
        if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool):
            raise InputTypeError(
                f"num_classes must be a whole number of classes, got {num_classes!r} "
                f"({type(num_classes).__name__})"
            )
        if not 1 <= num_classes <= MAX_CLASSES:
            raise ConfigError(
                f"num_classes must be from 1 to {MAX_CLASSES} (labels are uint8 and {IGNORE_INDEX} "
                f"is the ignore label), got {num_classes}"
            )
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise InputTypeError(
            f"weights must be a checkpoint path (str or os.PathLike), got {type(weights).__name__}; "
            "a state dict loads with model.load_state_dict"
        )
    if weights is None:
        meta = default_meta(name, num_classes=num_classes, **config)
        # float32 whatever torch's default dtype (a caller's may be float64): see below.
        model = spec.builder(num_outputs=meta.num_outputs, **meta.config).float()
        model.meta = meta  # type: ignore[assignment]
        return model.eval()

    ckpt = read_checkpoint(weights)
    if ckpt.meta is not None:
        if ckpt.meta.model != name:
            raise CheckpointError(f"{ckpt.path} holds weights for model {ckpt.meta.model!r}, not {name!r}")
        meta = ckpt.meta
    else:
        meta = _meta_for_plain(spec, ckpt, num_classes)
    if num_classes is not None and num_classes != len(meta.classes):
        raise CheckpointError(
            f"{ckpt.path} predicts {len(meta.classes)} classes ({meta.classes.name}), "
            f"but num_classes={num_classes} was asked for"
        )
    arch = {**meta.config, **config}
    try:
        # The random init is overwritten by the weights: drawn from a forked generator, it leaves
        # the caller's torch RNG where it was (a host seeding torch for its own work got other numbers).
        with torch.random.fork_rng(devices=[]):
            model = spec.builder(num_outputs=meta.num_outputs, **arch).float()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.path}: cannot build {name!r} with config {arch}: {exc}") from None
    # float32 before the checkpoint is cast to the model's dtypes: built under a caller's
    # torch.set_default_dtype(torch.float64) the parameters were float64, which ONNX export (a
    # float32 image) refused with "Input type (torch.FloatTensor) and weight type (torch.DoubleTensor)".
    expected = model.state_dict()
    check_state_dict_fits(expected, ckpt.state_dict, path=ckpt.path, model=name, num_outputs=meta.num_outputs)
    check_finite(ckpt.state_dict, path=ckpt.path)
    loaded = {k: ckpt.state_dict.get(k, v).to(v.dtype) for k, v in expected.items()}
    state, subnormal = without_subnormals(loaded)
    if subnormal:
        log.info("%s: %d subnormal weights set to 0 (%s)", ckpt.path, subnormal, SUBNORMAL_REASON)
    model.load_state_dict(state, strict=True)
    if arch != dict(meta.config):
        # The overrides change the graph (DeepLabV3+'s output_stride keeps every parameter), so
        # the metadata, which engine caches and saved checkpoints key on, must say so.
        meta = replace(meta, config=arch)
    if meta.provenance.get("source") == UNKNOWN_SOURCE:
        void = meta.num_outputs - len(meta.classes)
        log.warning(
            "%s is a plain state dict rtseg does not recognise: assuming %s's default preprocessing "
            "(%s) and classes %r; save it as an rtseg checkpoint to record the real ones (docs/models.md, "
            "'A plain state dict')%s",
            ckpt.path,
            name,
            meta.preprocessing,
            meta.classes.name,
            _void_note(meta.num_outputs, void) if void and num_classes is None else "",
        )
    model.meta = meta  # type: ignore[assignment]
    model.weights_path = ckpt.path
    return model.eval()
