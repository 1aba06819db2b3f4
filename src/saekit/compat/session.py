"""The original session: a pretrained SAE (or group of SAEs), its model and activation store.

```python
from saekit.compat import LMSparseAutoencoderSessionloader
model, sparse_autoencoder, activation_store = (
    LMSparseAutoencoderSessionloader.load_session_from_pretrained(path)
)
tokens_BT = activation_store.get_batch_tokens()      # [store_batch_size, context_size]
acts_ND = activation_store.next_batch()               # [train_batch_size, d_in], shuffled
logits, cache = model.run_with_cache(tokens_BT)       # cache[hook] -> [B, T, D]
sae_out, feature_acts, loss, mse_loss, l1_loss, _ = sparse_autoencoder(cache[hook])
```

`saekit.compat`'s loader returns the SAE itself; `sae_training.utils`'s (the original import
path) returns an `SAEGroup` of them, as the original did after it added SAE groups.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from saekit.compat.legacy_config import LegacySAEConfig
from saekit.compat.model import HookedLanguageModel
from saekit.data import ShuffleBuffer
from saekit.data.provenance import Provenance, activation_source, token_batches
from saekit.io.load import load_sae
from saekit.models import LanguageModel, load_model
from saekit.saes import SAE

# The original config's defaults, used when a file does not record a value.
_STORE_DEFAULTS = {"store_batch_size": 32, "train_batch_size": 4096, "n_batches_in_buffer": 20,
                   "context_size": 128, "prepend_bos": True}  # fmt: skip


class ActivationsStore:
    """Token and activation batches from the SAE's dataset, like the original store.

    `get_batch_tokens()` -> `[store_batch_size, context_size]` token ids;
    `next_batch()` -> `[train_batch_size, d_in]` activations at `hook_name`, shuffled in a
    buffer of about `store_batch_size * context_size * n_batches_in_buffer` tokens. Special
    tokens (BOS, EOS) are excluded from activation batches. Nothing is read until first use.
    """

    def __init__(
        self,
        model: LanguageModel,
        hook_name: str,
        dataset: str,
        *,
        context_size: int = 128,
        store_batch_size: int = 32,
        train_batch_size: int = 4096,
        n_batches_in_buffer: int = 20,
        prepend_bos: bool = True,
        seed: int = 42,
        provenance: Provenance | None = None,
    ) -> None:
        model.resolve_hook(hook_name)  # unknown hooks fail now, listing the valid ones
        base = provenance or Provenance(model=model.spec)
        self.provenance = base.replace(
            hooks=(hook_name,), dataset=dataset, context=context_size, prepend_bos=prepend_bos
        )
        self.model, self.hook_name, self.dataset = model, hook_name, dataset
        self.context_size, self.store_batch_size = context_size, store_batch_size
        self.train_batch_size, self.prepend_bos = train_batch_size, prepend_bos
        self.buffer_tokens = max(store_batch_size * context_size * n_batches_in_buffer, 2 * train_batch_size)
        self.seed = seed
        self._tokens: Iterator[tuple[Tensor, Tensor]] | None = None
        self._acts: Iterator[dict[str, Tensor]] | None = None

    def get_batch_tokens(self) -> Tensor:
        """The next `[store_batch_size, context_size]` token ids of the dataset."""
        if self._tokens is None:
            self._tokens = token_batches(self.provenance, self.model.tokenizer, self.store_batch_size)
        return next(self._tokens)[0].to(self.model.device)

    def next_batch(self) -> Tensor:
        """The next shuffled `[train_batch_size, d_in]` batch of activations."""
        if self._acts is None:
            source = activation_source(self.provenance, self.model, self.store_batch_size)
            self._acts = iter(ShuffleBuffer(source, self.buffer_tokens, self.train_batch_size, self.seed))
        return next(self._acts)[self.hook_name]


class SAEGroup:
    """The SAEs of one original run (one per swept setting): iterate, index, `.cfg`."""

    def __init__(self, autoencoders: list[SAE]) -> None:
        if not autoencoders:
            raise ValueError("an SAE group needs at least one SAE")
        self.autoencoders = list(autoencoders)

    @property
    def cfg(self) -> LegacySAEConfig:
        """The first SAE's config (the original group's shared config)."""
        return self.autoencoders[0].cfg

    def __iter__(self) -> Iterator[SAE]:
        return iter(self.autoencoders)

    def __len__(self) -> int:
        return len(self.autoencoders)

    def __getitem__(self, i: int) -> SAE:
        return self.autoencoders[i]

    def __call__(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        """The forward of the group's only SAE (code written before groups calls it so)."""
        if len(self.autoencoders) != 1:
            raise ValueError(f"this group holds {len(self)} SAEs: call one of them (group[i])")
        return self.autoencoders[0](x, *args, **kwargs)

    def to(self, device: str | torch.device) -> SAEGroup:
        for sae in self.autoencoders:
            sae.to(device)
            sae.cfg.device = str(device)
        return self

    def eval(self) -> SAEGroup:
        for sae in self.autoencoders:
            sae.eval()
        return self

    def train(self, mode: bool = True) -> SAEGroup:
        for sae in self.autoencoders:
            sae.train(mode)
        return self

    def __repr__(self) -> str:
        hooks = ", ".join(str(sae.cfg.metadata.hook_name) for sae in self.autoencoders)
        return f"SAEGroup({len(self)} SAEs at {hooks})"


def with_legacy_names(sae: SAE) -> SAE:
    """The SAE with its `cfg` answering to the original names too (same weights, same file)."""
    sae.cfg = LegacySAEConfig.of(sae.cfg)
    return sae


class LMSparseAutoencoderSessionloader:
    """The original session loader: a pretrained SAE with its model and activation store."""

    @classmethod
    def load_session_from_pretrained(
        cls,
        path: str,
        *,
        dataset: str | None = None,
        model: str | LanguageModel | None = None,
        device: str = "cpu",
    ) -> tuple[HookedLanguageModel, Any, ActivationsStore]:
        """`(model, sparse_autoencoder, activation_store)` for the SAE at `path`.

        `path`: anything `saekit.load_sae` takes (an original `.pt` file, a folder, a hub
        path). The model and dataset come from the SAE's config unless `model` / `dataset`
        are given (e.g. `model="tl:gpt2-small"` for the original GPT-2 SAEs).
        """
        sae = with_legacy_names(load_sae(path, device=device))
        lm, store = _model_and_store(sae, path, dataset, model, device)
        return lm, cls._wrap(sae), store

    @classmethod
    def _wrap(cls, sae: SAE) -> Any:
        """What the loader hands out for one SAE (the SAE itself here)."""
        return sae


def _model_and_store(
    sae: SAE, path: str, dataset: str | None, model: str | LanguageModel | None, device: str
) -> tuple[HookedLanguageModel, ActivationsStore]:
    meta = sae.cfg.metadata
    hook = meta.hook_name
    if hook is None:
        raise ValueError(f"{path}: the SAE config names no hook")
    dataset = dataset or meta.dataset_path
    if dataset is None:
        raise ValueError(f"{path}: the SAE config names no dataset; pass dataset=")
    lm = hooked(model if model is not None else meta.model_name, device)
    lm.default_hooks = (hook,)
    legacy = meta.extra.get("legacy_config", {})
    settings = {key: legacy.get(key, default) for key, default in _STORE_DEFAULTS.items()}
    prov, known = Provenance.from_sae(sae)
    if "context" in known:
        settings["context_size"] = prov.context
    settings["prepend_bos"] = prov.prepend_bos
    store = ActivationsStore(lm, hook, dataset, **settings, provenance=prov.replace(model=lm.spec))
    return lm, store


def hooked(model: str | LanguageModel | None, device: str = "cpu") -> HookedLanguageModel:
    """A `HookedLanguageModel` from a model spec or an already loaded `LanguageModel`."""
    if model is None:
        raise ValueError("the SAE config names no model; pass model=")
    if isinstance(model, HookedLanguageModel):
        return model
    if isinstance(model, str):
        try:
            model = load_model(model, device=device)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"cannot load the SAE's model {model!r} ({err}); pass model= a saekit model "
                "spec (e.g. 'tl:gpt2-small' for TransformerLens names) or a LanguageModel"
            ) from err
    return HookedLanguageModel(model.model, model.tokenizer, model.spec)
