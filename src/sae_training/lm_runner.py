"""`language_model_sae_runner(cfg)`: the original training entry point, run by `saekit train`.

The config's fields map onto saekit's `TrainConfig` (`sae_training.config.MAPPING`); the
trained SAEs are saved as saekit folders under `cfg.checkpoint_path` and returned as a group.
"""

from __future__ import annotations

import warnings

from sae_training.sparse_autoencoder import SparseAutoencoder
from saekit.compat.legacy_config import LanguageModelSAERunnerConfig
from saekit.compat.session import SAEGroup
from saekit.io.load import load_sae


def language_model_sae_runner(cfg: LanguageModelSAERunnerConfig) -> SAEGroup:
    """Train the SAE(s) `cfg` describes with saekit's trainer; returns them as a group."""
    from saekit.training.run import train

    result = train(cfg.to_train_config())
    saes = [SparseAutoencoder.from_sae(load_sae(folder)) for folder in result.sae_folders.values()]
    for sae in saes:
        if sae.cfg.d_in != cfg.d_in:
            warnings.warn(
                f"cfg.d_in={cfg.d_in} but {sae.cfg.metadata.hook_name} has width {sae.cfg.d_in}; "
                "saekit used the hook's width",
                stacklevel=2,
            )
    print(result.summary)
    return SAEGroup(saes)


__all__ = ["language_model_sae_runner"]
