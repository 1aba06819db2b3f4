"""The original mats_sae_training entry point, so its README code runs with one import changed.

```python
from saekit.compat import LMSparseAutoencoderSessionloader
model, sparse_autoencoder, activation_store = (
    LMSparseAutoencoderSessionloader.load_session_from_pretrained(path)
)
sparse_autoencoder.eval()
tokens_BT = activation_store.get_batch_tokens()      # [store_batch_size, context_size]
acts_ND = activation_store.next_batch()               # [train_batch_size, d_in], shuffled
logits, cache = model.run_with_cache(tokens_BT)       # cache[hook] -> [B, T, D]
sae_out, feature_acts, loss, mse_loss, l1_loss, _ = sparse_autoencoder(cache[hook])
```

`model` is a saekit `LanguageModel` with the few TransformerLens-style methods the original
tutorials call (`run_with_cache`, `run_with_hooks`, `to_tokens`); `sparse_autoencoder` is a
saekit SAE (its hook is `sparse_autoencoder.cfg.metadata.hook_name`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from saekit.data import ShuffleBuffer
from saekit.data.provenance import Provenance, activation_source, token_batches
from saekit.io.load import load_sae
from saekit.models import LanguageModel, load_model
from saekit.saes import SAE

# The original config's defaults, used when a file does not record a value.
_STORE_DEFAULTS = {"store_batch_size": 32, "train_batch_size": 4096, "n_batches_in_buffer": 20,
                   "context_size": 128, "prepend_bos": True}


class HookedLanguageModel(LanguageModel):
    """A `LanguageModel` that also answers the TransformerLens calls the original code made."""

    default_hooks: tuple[str, ...] = ()
    """Hooks `run_with_cache` records when given no `names_filter` (the session's SAE hook)."""

    def to_tokens(self, text: str | list[str], prepend_bos: bool = True) -> Tensor:
        """Token ids `[B, T]` (BOS first when `prepend_bos`), padded on the right."""
        texts = [text] if isinstance(text, str) else list(text)
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        if prepend_bos and self.bos_token_id is not None:
            ids = [[self.bos_token_id, *row] for row in ids]
        pad = self.tokenizer.pad_token_id or 0
        width = max(len(row) for row in ids)
        return torch.tensor([row + [pad] * (width - len(row)) for row in ids], device=self.device)

    def run_with_cache(
        self, tokens_BT: Tensor, names_filter: str | Sequence[str] | None = None, **_: Any
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One full forward: `(logits [B, T, V], {hook: act [B, T, D]})`.

        `names_filter` names the hooks to record (default: every hook of the SAEs loaded in
        the session). Other TransformerLens keyword arguments (`prepend_bos`, ...) are
        accepted and ignored: the tokens are used as given.
        """
        names = _names(names_filter, self.default_hooks)
        cache: dict[str, Tensor] = {}

        def recorder(name: str) -> Callable[[Tensor], Tensor]:
            def record(act: Tensor) -> Tensor:
                cache[name] = act.detach().clone()
                return act

            return record

        with contextlib.ExitStack() as stack:
            for name in names:
                stack.enter_context(self.splice(name, recorder(name)))
            logits = self.logits(tokens_BT)
        return logits, cache

    def run_with_hooks(
        self,
        tokens_BT: Tensor,
        return_type: str = "logits",
        fwd_hooks: Sequence[tuple[str, Callable[..., Tensor | None]]] = (),
        **_: Any,
    ) -> Tensor:
        """A forward with `hook_fn(act, hook)` applied at each named hook (its return value,
        if not None, replaces the activation). `return_type`: "logits" or "loss" (mean
        next-token cross-entropy)."""
        if return_type not in ("logits", "loss"):
            raise ValueError(f"return_type must be 'logits' or 'loss', got {return_type!r}")
        with contextlib.ExitStack() as stack:
            for name, hook_fn in fwd_hooks:
                stack.enter_context(self.splice(name, _tl_hook(name, hook_fn)))
            logits_BTV = self.logits(tokens_BT)
        if return_type == "logits":
            return logits_BTV
        tokens_BT = tokens_BT.to(logits_BTV.device)
        return F.cross_entropy(logits_BTV[:, :-1].flatten(0, 1).float(), tokens_BT[:, 1:].flatten())


def _names(names_filter: str | Sequence[str] | None, default: Sequence[str]) -> list[str]:
    if names_filter is None:
        if not default:
            raise ValueError("run_with_cache needs names_filter (the hook names to record)")
        return list(default)
    return [names_filter] if isinstance(names_filter, str) else list(names_filter)


def _tl_hook(name: str, hook_fn: Callable[..., Tensor | None]) -> Callable[[Tensor], Tensor]:
    hook = SimpleNamespace(name=name)

    def apply(act: Tensor) -> Tensor:
        out = hook_fn(act, hook=hook)
        return act if out is None else out

    return apply


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
    ) -> tuple[HookedLanguageModel, SAE, ActivationsStore]:
        """`(model, sparse_autoencoder, activation_store)` for the SAE at `path`.

        `path`: anything `saekit.load_sae` takes (an original `.pt` file, a folder, a hub
        path). The model and dataset come from the SAE's config unless `model` / `dataset`
        are given (e.g. `model="tl:gpt2-small"` for the original GPT-2 SAEs).
        """
        sae = load_sae(path, device=device)
        meta = sae.cfg.metadata
        lm = _hooked(model if model is not None else meta.model_name, device)
        hook = meta.hook_name
        if hook is None:
            raise ValueError(f"{path}: the SAE config names no hook")
        lm.default_hooks = (hook,)
        dataset = dataset or meta.dataset_path
        if dataset is None:
            raise ValueError(f"{path}: the SAE config names no dataset; pass dataset=")
        legacy = meta.extra.get("legacy_config", {})
        settings = {key: legacy.get(key, default) for key, default in _STORE_DEFAULTS.items()}
        prov, known = Provenance.from_sae(sae)
        if "context" in known:
            settings["context_size"] = prov.context
        settings["prepend_bos"] = prov.prepend_bos
        store = ActivationsStore(lm, hook, dataset, **settings, provenance=prov.replace(model=lm.spec))
        return lm, sae, store


def _hooked(model: str | LanguageModel | None, device: str) -> HookedLanguageModel:
    if model is None:
        raise ValueError("the SAE config names no model; pass model=")
    if isinstance(model, str):
        try:
            model = load_model(model, device=device)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"cannot load the SAE's model {model!r} ({err}); pass model= a saekit model "
                "spec (e.g. 'tl:gpt2-small' for TransformerLens names) or a LanguageModel"
            ) from err
    return HookedLanguageModel(model.model, model.tokenizer, model.spec)
