"""The loop, its callbacks, checkpoints and the runner behind ``babysit train``."""

from babysit.train.checkpoint import load_checkpoint, save_checkpoint
from babysit.train.loop import Callback, LoopState, Trainer, evaluate

__all__ = ["Callback", "LoopState", "Trainer", "evaluate", "load_checkpoint", "save_checkpoint"]
