"""Training: `train(TrainConfig(...))` or `saekit train`."""

from saekit.training.config import TrainConfig
from saekit.training.run import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
