"""`LanguageModel`: one wrapper over an HF causal LM or a TransformerLens model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from functools import cached_property
from typing import Literal

import torch
from torch import Tensor, nn

from saekit.models import hooks
from saekit.models.layouts import Layout, detect_layout


def _backend_of(model: nn.Module) -> Literal["hf", "tl"]:
    return "tl" if type(model).__module__.startswith("transformer_lens") else "hf"


class LanguageModel:
    """A causal language model with TransformerLens-style hook names on every backend.

    Args:
        model: an HF `PreTrainedModel` (causal LM) or a TransformerLens `HookedTransformer`.
        tokenizer: its tokenizer (HF `PreTrainedTokenizerBase`).
        spec: the name it was loaded by (shown in errors and written into SAE metadata).
    """

    def __init__(self, model: nn.Module, tokenizer, spec: str = "custom") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.backend = _backend_of(model)
        self.layout: Layout | None = detect_layout(model) if self.backend == "hf" else None
        self._dims: dict[str, int] = {}

    def __repr__(self) -> str:
        return (
            f"LanguageModel({self.spec!r}, backend={self.backend}, n_layers={self.n_layers}, "
            f"d_model={self.d_model}, device={self.device}, dtype={self.dtype})"
        )

    # -- shape and placement ------------------------------------------------------------------

    @cached_property
    def n_layers(self) -> int:
        if self.backend == "tl":
            return self.model.cfg.n_layers
        return len(self.model.get_submodule(self.layout.layers))

    @cached_property
    def d_model(self) -> int:
        if self.backend == "tl":
            return self.model.cfg.d_model
        return self.model.config.get_text_config().hidden_size

    @cached_property
    def max_context(self) -> int | None:
        """The most positions the model takes (None when its config does not say)."""
        if self.backend == "tl":
            return int(self.model.cfg.n_ctx)
        limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return int(limit) if limit else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- tokens -------------------------------------------------------------------------------

    @property
    def bos_token_id(self) -> int | None:
        """The tokenizer's BOS id (falls back to the model config's), None if it has none."""
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is None and self.backend == "hf":
            bos = self.model.config.get_text_config().bos_token_id
        return bos

    @property
    def special_token_ids(self) -> set[int]:
        """Ids of the tokenizer's special tokens (BOS, EOS, PAD, ...)."""
        return set(getattr(self.tokenizer, "all_special_ids", []) or [])

    # -- hooks --------------------------------------------------------------------------------

    def hook_names(self) -> list[str]:
        """Every TransformerLens-style hook name of this model (raw module paths also work)."""
        return hooks.hook_names(self)

    def resolve_hook(self, name: str) -> hooks.HookPoint:
        """See `saekit.models.resolve_hook`."""
        return hooks.resolve_hook(self, name)

    def hook_dim(self, name: str) -> int:
        """Width of the activation at `name` (last dimension)."""
        hooks.resolve_hook(self, name)  # ValueError for unknown names
        if self.backend == "hf" and name.startswith("blocks."):
            return self.d_model
        if name not in self._dims:  # a raw module path or TL hook: run a tiny batch to see
            ids = torch.zeros(2, 3, dtype=torch.long, device=self.device)
            shape = tuple(self.run_to_hooks(ids, [name])[name].shape)
            if len(shape) != 3 or shape[:2] != (2, 3):
                raise ValueError(
                    f"hook {name!r} gives {list(shape)} for a [2, 3] batch of tokens, not a "
                    "[batch, position, width] activation; hook a module that outputs one"
                )
            self._dims[name] = shape[-1]
        return self._dims[name]

    def _forward(self, input_ids_BT: Tensor, attention_mask: Tensor | None) -> object:
        if self.max_context is not None and input_ids_BT.shape[-1] > self.max_context:
            raise ValueError(
                f"context {input_ids_BT.shape[-1]} is longer than {self.spec}'s maximum of "
                f"{self.max_context} positions; use --context {self.max_context} or less"
            )
        input_ids_BT = input_ids_BT.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        if self.backend == "tl":
            return self.model(input_ids_BT, return_type="logits", attention_mask=attention_mask)
        return self.model(input_ids=input_ids_BT, attention_mask=attention_mask, use_cache=False)

    def run_to_hooks(
        self,
        input_ids_BT: Tensor,
        hooks_: Sequence[str],
        attention_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Activations `{hook: Tensor[B, T, D]}` from one forward that stops after the last hook.

        Layers after the last requested activation (and the unembedding) never run. The
        tensors are fresh copies that can be used for training.
        """
        if isinstance(hooks_, str):
            hooks_ = [hooks_]
        with torch.inference_mode():
            return hooks.capture(self, lambda: self._forward(input_ids_BT, attention_mask), hooks_)

    def splice(self, hook: str, fn: Callable[[Tensor], Tensor]) -> AbstractContextManager[None]:
        """Context manager: every forward inside it replaces the activation at `hook` by `fn(act_BTD)`.

        Example: `with lm.splice("blocks.3.hook_resid_post", lambda x: sae(x).sae_out): lm.logits(ids)`.
        """
        return hooks.splice(self, hook, fn)

    def logits(self, input_ids_BT: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Full forward (no gradients): `Tensor[B, T, V]`."""
        with torch.no_grad():
            out = self._forward(input_ids_BT, attention_mask)
        return out if self.backend == "tl" else out.logits

    def generate(self, prompts, max_new_tokens: int = 40, **kwargs):
        """Complete text prompt(s) using the KV cache; see `saekit.models.generate.generate`.

        Example: `lm.generate("The weather today", max_new_tokens=40)` -> the completion.
        Hooks that edit activations (`lm.splice`, `saekit.steer`) apply while it runs.
        """
        from saekit.models.generate import generate

        return generate(self, prompts, max_new_tokens, **kwargs)

    def unembed_matrix(self) -> Tensor:
        """The unembedding weight as `[D, V]` (HF `lm_head.weight.T`, TL `W_U`).

        It acts on the *normalized* residual stream: apply `lm.final_norm` first (and, for
        models with a final logit soft-cap such as Gemma 2, the cap after).
        """
        if self.backend == "tl":
            return self.model.W_U
        return self.model.get_output_embeddings().weight.T

    @property
    def final_norm(self) -> nn.Module | None:
        """The norm applied before the unembedding (None if the model has none)."""
        path = "ln_final" if self.backend == "tl" else self.layout.final_norm
        return dict(self.model.named_modules()).get(path) if path else None
