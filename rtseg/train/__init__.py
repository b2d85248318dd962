"""Training: `rtseg train` and the recipe behind rtseg's shipped weights."""

from .trainer import SavedState, TrainConfig, Trainer, check_out_is_free, read_state, state_path_for

__all__ = ["SavedState", "TrainConfig", "Trainer", "check_out_is_free", "read_state", "state_path_for"]
