"""`HookedLanguageModel`: a saekit `LanguageModel` that answers the TransformerLens calls the
original mats_sae_training tutorials make.

```python
logits = model("The cat sat", return_type="logits")         # [1, T, V]; strings or tokens
loss = model(tokens_BT, return_type="loss")                   # mean next-token cross-entropy
logits, cache = model.run_with_cache("Hello", prepend_bos=True)   # cache[hook] -> [B, T, D]
loss = model.run_with_hooks(tokens_BT, return_type="loss", fwd_hooks=[(hook, fn)])
with model.hooks(fwd_hooks=[(hook, fn)]):                     # every forward inside is hooked
    model(tokens_BT)
model.to_tokens(text), model.to_string(ids), model.to_str_tokens(text), model.tokenizer.vocab
```

A hook function is called as `fn(activation_BTD, hook=hook)` (`hook.name`, `hook.layer()`), as
in TransformerLens; a returned tensor replaces the activation, `None` keeps it. Hook names
are saekit's (`blocks.L.hook_resid_pre`, ..., which are TransformerLens's names).

Where it differs from TransformerLens: only forward hooks (no `bwd_hooks`); a hook may
return a tensor *shorter in the sequence dimension* than the activation (TransformerLens then
runs the rest of the model on the shorter sequence); here the returned positions replace the
first positions and the others keep their activation, which gives the same logits at those
positions in a causal model. `run_with_cache` returns a plain dict (TransformerLens's
`ActivationCache` also takes `cache["resid_pre", 8]`; so does this one).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from saekit.models import LanguageModel

HookFn = Callable[..., Tensor | None]
Text = str | list[str]


@dataclass
class HookInfo:
    """What a TransformerLens hook function receives as `hook`."""

    name: str

    def layer(self) -> int:
        """The block index in the hook name (`blocks.8.hook_resid_pre` -> 8)."""
        match = re.match(r"blocks\.(\d+)\.", self.name)
        if match is None:
            raise ValueError(f"hook {self.name!r} is not inside a block")
        return int(match.group(1))


@dataclass
class ModelConfig:
    """The few `HookedTransformer.cfg` fields the original code reads."""

    model_name: str
    n_layers: int
    d_model: int
    d_vocab: int
    n_ctx: int | None
    device: torch.device
    default_prepend_bos: bool = True


class ActivationCache(dict):
    """`{hook name: Tensor[B, T, D]}`; `cache["resid_pre", 8]` means `blocks.8.hook_resid_pre`."""

    def __getitem__(self, key: str | tuple) -> Tensor:
        if isinstance(key, tuple):
            from saekit.compat.tl_utils import get_act_name

            key = get_act_name(*key)
        return super().__getitem__(key)


class HookedLanguageModel(LanguageModel):
    """A `LanguageModel` that also answers the TransformerLens calls the original code made."""

    default_hooks: tuple[str, ...] = ()
    """Hooks `run_with_cache` records when given no `names_filter` (the session's SAE hooks);
    empty means every hook of the model."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, spec: str = "custom") -> None:
        super().__init__(model, tokenizer, spec)
        self._persistent: list[tuple[str, HookFn]] = []  # add_hook / reset_hooks
        self._contexts: list[list[tuple[str, HookFn]]] = []  # model.hooks(...) blocks

    # -- configuration and weights --------------------------------------------------------

    @property
    def cfg(self) -> ModelConfig:
        """`n_layers`, `d_model`, `d_vocab`, `n_ctx`, `device`, `model_name` (read-only)."""
        text = getattr(self.model, "config", None)
        n_ctx = getattr(text.get_text_config(), "max_position_embeddings", None) if text else None
        if self.backend == "tl":
            n_ctx = self.model.cfg.n_ctx
        return ModelConfig(self.spec, self.n_layers, self.d_model,
                           self.unembed_matrix().shape[1], n_ctx, self.device)  # fmt: skip

    @property
    def W_U(self) -> Tensor:
        """The unembedding `[d_model, d_vocab]`."""
        return self.unembed_matrix()

    def to(self, device: str | torch.device) -> HookedLanguageModel:
        """Move the model; returns self."""
        self.model.to(device)
        return self

    def eval(self) -> HookedLanguageModel:
        """The model is always in eval mode; returns self."""
        self.model.eval()
        return self

    # -- tokens -----------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def to_tokens(
        self, input: Text, prepend_bos: bool | None = None, padding_side: str | None = None,
        move_to_device: bool = True, truncate: bool = True,
    ) -> Tensor:  # fmt: skip
        """Token ids `[B, T]` (BOS first unless `prepend_bos=False`), padded on `padding_side`."""
        return self._batch(input, prepend_bos, padding_side, move_to_device)[0]

    def _batch(
        self, input: Text, prepend_bos: bool | None, padding_side: str | None = None,
        move_to_device: bool = True,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """`(tokens_BT, attention_mask_BT)` of one or more texts."""
        texts = [input] if isinstance(input, str) else list(input)
        ids = [self._encode(t) for t in texts]
        if prepend_bos is not False and self.bos_token_id is not None:
            ids = [[self.bos_token_id, *row] for row in ids]
        width = max(len(row) for row in ids)
        pad = self.tokenizer.pad_token_id or 0
        left = padding_side == "left"
        tokens, mask = [], []
        for row in ids:
            fill = width - len(row)
            tokens.append([pad] * fill + row if left else row + [pad] * fill)
            mask.append([0] * fill + [1] * len(row) if left else [1] * len(row) + [0] * fill)
        device = self.device if move_to_device else "cpu"
        return torch.tensor(tokens, device=device), torch.tensor(mask, device=device)

    def to_string(self, tokens: int | Tensor | Sequence[int]) -> str | list[str]:
        """The text of a token id, of a 1-D sequence of ids, or (a list) of each row of `[B, T]`."""
        if isinstance(tokens, Tensor) and tokens.dim() == 2:
            return [self.to_string(row) for row in tokens]
        ids = [int(tokens)] if isinstance(tokens, int) or (
            isinstance(tokens, Tensor) and tokens.dim() == 0) else [int(i) for i in tokens]  # fmt: skip
        return self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)

    def to_str_tokens(
        self, input: str | Tensor | Sequence[int], prepend_bos: bool | None = None
    ) -> list[str]:
        """Each token's text: of a string (tokenized, BOS first by default) or of token ids."""
        if isinstance(input, str):
            ids = self.to_tokens(input, prepend_bos=prepend_bos)[0].tolist()
        elif isinstance(input, Tensor):
            ids = input.squeeze(0).tolist() if input.dim() == 2 else input.reshape(-1).tolist()
        else:
            ids = [int(i) for i in input]
        return self.tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token."""
        ids = self._encode(string)
        if len(ids) != 1:
            raise ValueError(f"{string!r} is {len(ids)} tokens, not one")
        return ids[0]

    def to_single_str_token(self, token: int) -> str:
        """The text of one token id."""
        return self.tokenizer.decode([int(token)], clean_up_tokenization_spaces=False)

    # -- forwards ---------------------------------------------------------------------------

    def __call__(
        self, input: Text | Tensor, return_type: str | None = "logits",
        prepend_bos: bool | None = None, loss_per_token: bool = False, **_: Any,
    ) -> Tensor | tuple[Tensor, Tensor] | None:  # fmt: skip
        """A full forward with the active hooks; `return_type`: logits, loss, both or None."""
        return self._run(input, (), return_type, prepend_bos, loss_per_token)

    forward = __call__

    def run_with_hooks(
        self, input: Text | Tensor, *, fwd_hooks: Sequence[tuple[str, HookFn]] = (),
        bwd_hooks: Sequence[Any] = (), return_type: str | None = "logits",
        prepend_bos: bool | None = None, loss_per_token: bool = False, **_: Any,
    ) -> Tensor | tuple[Tensor, Tensor] | None:  # fmt: skip
        """A forward with `hook_fn(act, hook=hook)` applied at each named hook (and the
        active ones); `return_type` as for `model(...)`."""
        if bwd_hooks:
            raise ValueError("backward hooks are not supported; use forward hooks")
        return self._run(input, fwd_hooks, return_type, prepend_bos, loss_per_token)

    def run_with_cache(
        self, input: Text | Tensor,
        names_filter: str | Sequence[str] | Callable[[str], bool] | None = None,
        return_type: str | None = "logits", prepend_bos: bool | None = None, **_: Any,
    ) -> tuple[Any, ActivationCache]:  # fmt: skip
        """`(output, cache)`: the forward's output and `{hook: act [B, T, D]}` of the named
        hooks (default: the session's SAE hooks, else every hook)."""
        cache = ActivationCache()

        def record(act: Tensor, hook: HookInfo) -> None:
            cache[hook.name] = act.detach().clone()

        hooks = [(name, record) for name in self._names(names_filter)]
        return self._run(input, hooks, return_type, prepend_bos, False), cache

    @contextlib.contextmanager
    def hooks(
        self, fwd_hooks: Sequence[tuple[str, HookFn]] = (), bwd_hooks: Sequence[Any] = (),
        reset_hooks_end: bool = True, clear_contexts: bool = False,
    ) -> Iterator[HookedLanguageModel]:  # fmt: skip
        """Context manager: every forward inside the block runs with `fwd_hooks`."""
        if bwd_hooks:
            raise ValueError("backward hooks are not supported; use forward hooks")
        for name, _ in fwd_hooks:
            self.resolve_hook(name)
        self._contexts.append(list(fwd_hooks))
        try:
            yield self
        finally:
            self._contexts.pop()

    def add_hook(self, name: str, hook: HookFn) -> None:
        """Keep `hook` at `name` on every forward until `reset_hooks()`."""
        self.resolve_hook(name)
        self._persistent.append((name, hook))

    def reset_hooks(self, *_: Any, **__: Any) -> None:
        """Remove the hooks added with `add_hook`."""
        self._persistent.clear()

    def _names(self, names_filter: Any) -> list[str]:
        if names_filter is None:
            return list(self.default_hooks) or self.hook_names()
        if isinstance(names_filter, str):
            return [names_filter]
        if callable(names_filter):
            return [n for n in self.hook_names() if names_filter(n)]
        return list(names_filter)

    def _run(
        self, input: Text | Tensor, call_hooks: Sequence[tuple[str, HookFn]],
        return_type: str | None, prepend_bos: bool | None, loss_per_token: bool,
    ) -> Any:  # fmt: skip
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be logits, loss, both or None, got {return_type!r}")
        if isinstance(input, Tensor):
            tokens_BT = input if input.dim() == 2 else input.reshape(1, -1)
            mask_BT = None
        else:
            tokens_BT, mask_BT = self._batch(input, prepend_bos)
            mask_BT = None if bool(mask_BT.all()) else mask_BT
        active = [*self._persistent, *(h for block in self._contexts for h in block), *call_hooks]
        with contextlib.ExitStack() as stack:
            for name, fn in active:
                stack.enter_context(self.splice(name, _tl_hook(name, fn)))
            logits_BTV = self.logits(tokens_BT, mask_BT)
        if return_type == "logits":
            return logits_BTV
        if return_type is None:
            return None
        loss = next_token_loss(logits_BTV, tokens_BT.to(logits_BTV.device), mask_BT, loss_per_token)
        return loss if return_type == "loss" else (logits_BTV, loss)


def next_token_loss(
    logits_BTV: Tensor, tokens_BT: Tensor, mask_BT: Tensor | None = None, per_token: bool = False
) -> Tensor:
    """Cross-entropy of each next token: the mean, or `[B, T-1]` with `per_token`
    (padding, where `mask_BT` is 0, left out of the mean)."""
    loss_BT = F.cross_entropy(
        logits_BTV[:, :-1].flatten(0, 1).float(), tokens_BT[:, 1:].flatten(), reduction="none"
    ).view(tokens_BT.shape[0], -1)
    if per_token:
        return loss_BT
    if mask_BT is None:
        return loss_BT.mean()
    keep_BT = mask_BT[:, 1:].to(loss_BT.device).bool()
    return loss_BT[keep_BT].mean()


def _tl_hook(name: str, hook_fn: HookFn) -> Callable[[Tensor], Tensor]:
    """Adapt a TransformerLens hook function to `LanguageModel.splice`."""
    hook = HookInfo(name)

    def apply(act_BTD: Tensor) -> Tensor:
        out = hook_fn(act_BTD, hook=hook)
        if out is None:
            return act_BTD
        if not isinstance(out, Tensor):
            raise ValueError(f"hook at {name} returned a {type(out).__name__}, not a tensor")
        out = out.to(act_BTD.device, act_BTD.dtype)
        if out.shape == act_BTD.shape:
            return out
        same_rest = out.dim() == act_BTD.dim() and out.shape[2:] == act_BTD.shape[2:]
        if same_rest and out.shape[0] in (1, act_BTD.shape[0]) and out.shape[1] <= act_BTD.shape[1]:
            merged = act_BTD.clone()  # a shorter sequence replaces the first positions
            merged[:, : out.shape[1]] = out
            return merged
        raise ValueError(
            f"hook at {name} returned shape {tuple(out.shape)} for an activation of shape "
            f"{tuple(act_BTD.shape)}"
        )

    return apply
