"""Training: `rtseg train` and the recipe behind rtseg's shipped weights."""

from .trainer import TrainConfig, Trainer, state_path_for

__all__ = ["TrainConfig", "Trainer", "state_path_for"]
