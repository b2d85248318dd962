"""Which weights a benchmark runs: the authors' real checkpoints where they exist, else random ones.

Speed does not depend on the weights' values (subnormal ones, which slow x86 CPUs down several
times, are set to 0 when weights load: ``models.checkpoint.without_subnormals``), but the label
maps (and so the keyframe scheduler's decisions and the agreement score) do, so real weights are
used whenever the shared data folder has them, and the result always says which were used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .environment import source_checkout

ENV_DATA = "RTSEG_DATA"
_REPO = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class KnownWeights:
    """A real checkpoint in the shared data folder, for one model and (optionally) one input size."""

    model: str
    relative_path: str
    description: str
    size: tuple[int, int] | None = None  # None: any input size


# First match wins: an exact-size entry is listed before the any-size default of its model.
REAL_WEIGHTS: tuple[KnownWeights, ...] = (
    KnownWeights(
        "espnet", "weights/espnet/decoder/espnet_p_2_q_8_camvid.pth", "ESPNet p=2 q=8, CamVid", (480, 360)
    ),
    KnownWeights("espnet", "weights/espnet/decoder/espnet_p_2_q_8.pth", "ESPNet p=2 q=8, Cityscapes"),
    KnownWeights("espnet-c", "weights/espnet/encoder/espnet_p_2_q_8.pth", "ESPNet-C p=2 q=8, Cityscapes"),
    KnownWeights(
        "espnetv2", "weights/espnetv2/espnetv2_s_2.0_city_1024x512.pth", "ESPNetv2 s=2.0, Cityscapes"
    ),
)


def default_data_root() -> Path | None:
    """$RTSEG_DATA, else ../shared/data beside rtseg's source checkout; None for an installed
    rtseg without $RTSEG_DATA (../shared/data beside site-packages is nobody's data folder)."""
    env = os.environ.get(ENV_DATA)
    if env:
        return Path(env)
    return _REPO.parent / "shared" / "data" if source_checkout(_REPO) else None


def data_root() -> Path:
    """The data folder (``default_data_root``); a ConfigError saying to set $RTSEG_DATA when none."""
    root = default_data_root()
    if root is None:
        raise ConfigError(
            f"no data folder: set {ENV_DATA} to the folder with the weights and datasets (only a "
            "source checkout of rtseg has a default, ../shared/data beside it)"
        )
    return root


@dataclass(frozen=True)
class WeightsChoice:
    path: Path | None  # None: random initialisation
    origin: str  # what they are, for reports

    @property
    def real(self) -> bool:
        return self.path is not None

    def to_dict(self) -> dict:
        return {
            "path": None if self.path is None else str(self.path),
            "origin": self.origin,
            "real": self.real,
        }


RANDOM = "random init (speed does not depend on weight values once subnormals are 0)"


def choose_weights(
    model: str,
    size: tuple[int, int] | None,
    *,
    given: str | os.PathLike[str] | None = None,
    root: Path | None = None,
) -> WeightsChoice:
    """``given`` if any (it must exist), else the shared folder's real checkpoint for ``model`` at
    ``size``, else random initialisation."""
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise ConfigError(f"--weights {path}: no such file")
        return WeightsChoice(path, f"given: {path.name}")
    root = default_data_root() if root is None else root
    if root is None:  # no data folder: random weights, which the result says
        return WeightsChoice(None, RANDOM)
    for known in REAL_WEIGHTS:
        if known.model != model or (known.size is not None and known.size != size):
            continue
        path = root / known.relative_path
        if path.is_file():
            return WeightsChoice(path, f"real: {known.description} ({path.name})")
    return WeightsChoice(None, RANDOM)
