"""`LMSparseAutoencoderSessionloader`: the original entry point, returning an SAE group.

```python
from sae_training.utils import LMSparseAutoencoderSessionloader
model, sparse_autoencoders, activation_store = (
    LMSparseAutoencoderSessionloader.load_session_from_pretrained(path)
)
sparse_autoencoder = sparse_autoencoders[0]   # or: for sae in sparse_autoencoders
```
"""

from __future__ import annotations

from typing import Any

from sae_training.sparse_autoencoder import SparseAutoencoder
from saekit.compat import LMSparseAutoencoderSessionloader as _Loader
from saekit.compat import SAEGroup
from saekit.compat.legacy_config import LanguageModelSAERunnerConfig
from saekit.compat.session import ActivationsStore, HookedLanguageModel, hooked
from saekit.saes import SAE


class LMSparseAutoencoderSessionloader(_Loader):
    """The original loader: `load_session_from_pretrained(path)` for an SAE file or folder,
    `LMSparseAutoencoderSessionloader(cfg).load_session()` for a fresh session to train."""

    def __init__(self, cfg: LanguageModelSAERunnerConfig) -> None:
        self.cfg = cfg

    @classmethod
    def _wrap(cls, sae: SAE) -> SAEGroup:
        if sae.cfg.architecture == "relu":
            sae = SparseAutoencoder.from_sae(sae)
        return SAEGroup([sae])

    def load_session(self) -> tuple[HookedLanguageModel, SAEGroup, ActivationsStore]:
        """`(model, group of freshly initialised SAEs, activation store)` for `self.cfg`."""
        cfg = self.cfg
        model = hooked(cfg.model_name, cfg.device)
        hooks = cfg.hook_points()
        l1s = cfg.l1_coefficient if isinstance(cfg.l1_coefficient, list) else [cfg.l1_coefficient]
        saes = [
            SparseAutoencoder(cfg.replace(hook_point=hook, hook_point_layer=0, l1_coefficient=l1))
            for hook in hooks
            for l1 in l1s
        ]
        model.default_hooks = hooks
        store = ActivationsStore(
            model, hooks[0], cfg.dataset_path, context_size=cfg.context_size,
            store_batch_size=cfg.store_batch_size, train_batch_size=cfg.train_batch_size,
            n_batches_in_buffer=cfg.n_batches_in_buffer, prepend_bos=cfg.prepend_bos, seed=cfg.seed,
        )  # fmt: skip
        return model, SAEGroup(saes), store

    @staticmethod
    def get_model(model_name: str, device: str = "cpu") -> Any:
        """A `HookedLanguageModel` for a saekit model spec."""
        return hooked(model_name, device)


__all__ = ["LMSparseAutoencoderSessionloader"]
