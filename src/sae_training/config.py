"""`LanguageModelSAERunnerConfig`: the original training config, mapped onto saekit's `TrainConfig`."""

from saekit.compat.legacy_config import MAPPING, LanguageModelSAERunnerConfig

__all__ = ["MAPPING", "LanguageModelSAERunnerConfig"]
