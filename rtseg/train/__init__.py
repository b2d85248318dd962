"""Training: `rtseg train` and the recipe behind rtseg's shipped weights."""

from .trainer import SavedState, TrainConfig, Trainer, read_state, state_path_for

__all__ = ["SavedState", "TrainConfig", "Trainer", "read_state", "state_path_for"]
