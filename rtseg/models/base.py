"""The staged-network contract every rtseg model follows.

A keyframe scheduler needs three entry points: a cheap ``low`` stage run on every frame, an
expensive ``deep`` stage whose output can be cached and reused, and a ``head`` that refines the
cached deep features with the current frame's low-level features. Channel counts and strides of
what flows between the stages are data (``StageSpec``), as in timm's ``feature_info``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError

Features = dict[str, Tensor]


def whole_number(owner: str, field: str, value: object, minimum: int) -> int:
    """``value`` as an int if it is a whole number >= ``minimum``, else ConfigError naming the field.

    Layer counts and widths go straight into ``range`` and ``nn.Conv2d``: a negative count silently
    builds fewer layers, and a float fails deep inside torch without saying which option was wrong.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{owner}.{field} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class FeatureInfo:
    """One named tensor passed between stages: channels and stride relative to the input."""

    name: str
    channels: int
    stride: int

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"FeatureInfo.name must be an identifier, got {self.name!r}")
        if self.channels <= 0:
            raise ValueError(f"FeatureInfo.channels must be positive, got {self.channels}")
        if self.stride <= 0:
            raise ValueError(f"FeatureInfo.stride must be positive, got {self.stride}")


@dataclass(frozen=True)
class StageSpec:
    """What ``forward_low`` and ``forward_deep`` return, and the logits' stride.

    ``low`` lists every tensor ``forward_low`` returns from the current frame: the head reads some
    of them (``rtseg.engine.graphs.head_low_inputs`` traces which), ``forward_deep`` those named in
    ``deep_inputs``. ``deep`` lists what the scheduler caches.
    """

    low: tuple[FeatureInfo, ...]
    deep: tuple[FeatureInfo, ...]
    deep_inputs: tuple[str, ...]
    output_stride: int
    input_multiple: int  # input height and width must be multiples of this

    def __post_init__(self) -> None:
        low_names = {f.name for f in self.low}
        if len(low_names) != len(self.low):
            raise ValueError(f"StageSpec.low has duplicate names: {[f.name for f in self.low]}")
        missing = [n for n in self.deep_inputs if n not in low_names]
        if missing:
            raise ValueError(f"StageSpec.deep_inputs {missing} are not among low {sorted(low_names)}")
        if self.output_stride <= 0 or self.input_multiple <= 0:
            raise ValueError(
                "StageSpec.output_stride and input_multiple must be positive, "
                f"got {self.output_stride} and {self.input_multiple}"
            )


class StagedSegmenter(nn.Module):
    """Base class: ``forward(x) == forward_head(low, forward_deep(low))`` with ``low = forward_low(x)``.

    Subclasses implement the three stages and set ``stage_spec`` and ``num_outputs``. ``forward``
    is defined here once, so the equality the scheduler relies on holds by construction.
    """

    stage_spec: StageSpec
    num_outputs: int
    weights_path: Path | None = None  # the checkpoint get_model loaded, named by later errors

    def forward_low(self, x: Tensor) -> Features:
        raise NotImplementedError

    def forward_deep(self, low: Features) -> Features:
        raise NotImplementedError

    def forward_head(self, low: Features, deep: Features) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        low = self.forward_low(x)
        return self.forward_head(low, self.forward_deep(low))

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Main logits plus auxiliary training logits (for example ICNet's cascade guidance)."""
        return self(x), {}

    def check_input(self, x: Tensor) -> None:
        """Raise ConfigError (an RtsegError, and a ValueError) for inputs the architecture cannot take."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ConfigError(f"expected an Nx3xHxW tensor, got shape {tuple(x.shape)}")
        m = self.stage_spec.input_multiple
        h, w = x.shape[-2:]
        if h % m or w % m:
            raise ConfigError(
                f"{type(self).__name__} needs input height and width divisible by {m}, got {w}x{h}"
            )


def deep_inputs(low: Features, spec: StageSpec) -> Features:
    """The subset of low features the deep stage reads (what a deep worker must be handed)."""
    return {name: low[name] for name in spec.deep_inputs}


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs, unit BN: the usual from-scratch initialisation."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


M = TypeVar("M", bound=nn.Module)


def module_modes(model: nn.Module) -> dict[nn.Module, bool]:
    """Each submodule's training flag, for ``restore_modes``: building an engine puts a network in
    eval mode, and the caller's may be in training, some BatchNorm frozen (per module, not one
    flag for the whole network)."""
    return {m: m.training for m in model.modules()}


def restore_modes(modes: dict[nn.Module, bool]) -> None:
    for module, training in modes.items():
        module.training = training


@torch.no_grad()
def prime_batchnorm(model: M, batches: Iterable[Tensor]) -> M:
    """Replace a randomly initialised network's BatchNorm statistics with those of ``batches``.

    Kaiming-initialised networks with unit running statistics blow activations up layer after
    layer; a few train-mode passes give the activation and logit ranges a trained network has,
    which int8 calibration and parity tolerances depend on. Returns the model in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the priming batches
    model.train()
    for x in batches:
        model(x)
    for bn in norms:
        bn.momentum = 0.1
    return model.eval()
