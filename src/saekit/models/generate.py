"""Text generation on every backend, with the model's KV cache.

HF models go through `model.generate` (its dynamic KV cache, greedy or sampled decoding);
TransformerLens models through a short decoding loop on `HookedTransformerKeyValueCache`.
Prompts of different lengths are left-padded into one batch (TransformerLens: one batch per
prompt length). Hooks that edit activations (`lm.splice`, `saekit.steer`) apply during
generation; `PROMPT_LENGTH` tells them where the prompt ends while a call runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from saekit.models.language_model import LanguageModel

PROMPT_LENGTH: ContextVar[int | None] = ContextVar("saekit_prompt_length", default=None)
"""Length of the (left-padded) prompt block while `generate_ids` runs, else None."""


@dataclass
class Generation:
    """What `generate(..., return_ids=True)` returns.

    Attributes:
        completions: the generated text of each prompt (prompt not included).
        tokens_BT: prompt block (left-padded) followed by the generated ids (pad after EOS).
        attention_mask_BT: 1 on real tokens, 0 on padding (both sides).
        prompt_length: width of the prompt block; `tokens_BT[:, prompt_length:]` is new.
    """

    completions: list[str]
    tokens_BT: Tensor
    attention_mask_BT: Tensor
    prompt_length: int


def pad_id(lm: LanguageModel) -> int:
    """The id used for padding: the tokenizer's pad token, else EOS, else 0."""
    tok = lm.tokenizer
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tok, name, None)
        if value is not None:
            return int(value)
    return 0


def encode_prompts(
    lm: LanguageModel, prompts: Sequence[str], *, prepend_bos: bool = True, chat: bool = False
) -> tuple[Tensor, Tensor]:
    """Token ids `[B, P]` left-padded to the longest prompt, and their attention mask.

    `prepend_bos` puts the BOS token first (as SAE training does) unless the text already
    starts with it; `chat=True` wraps each prompt as a user turn of the tokenizer's chat template.
    """
    tok = lm.tokenizer
    if tok is None:
        raise ValueError(f"{lm.spec} has no tokenizer: pass token ids to generate_ids instead")
    rows: list[list[int]] = []
    for text in prompts:
        if chat:
            if not getattr(tok, "chat_template", None):
                raise ValueError(f"chat=True: the tokenizer of {lm.spec} has no chat template")
            text = tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        bos = lm.bos_token_id
        if prepend_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        if not ids:
            raise ValueError("empty prompt: pass some text or prepend_bos=True")
        rows.append(ids)
    width = max(len(r) for r in rows)
    ids_BP = torch.full((len(rows), width), pad_id(lm), dtype=torch.long)
    mask_BP = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids_BP[b, width - len(r) :] = torch.tensor(r)
        mask_BP[b, width - len(r) :] = 1
    return ids_BP, mask_BP


def _check_sampling(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None
):
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


@torch.no_grad()
def generate_ids(
    lm: LanguageModel,
    input_ids_BP: Tensor,
    attention_mask_BP: Tensor | None = None,
    max_new_tokens: int = 40,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    stop_at_eos: bool = True,
    streamer: Any = None,
) -> Tensor:
    """Prompt ids `[B, P]` (left-padded) -> `[B, P + N]` with the N <= max_new_tokens new ids.

    Greedy unless `do_sample`; sampling draws from a generator seeded by `seed` (the global
    RNG is left as it was). Rows that reach EOS are padded while the others go on.
    `streamer`: an object with `put(ids)` and `end()`, as transformers' streamers, told the
    prompt ids and then each new token as it is chosen (one prompt at a time).
    """
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    if streamer is not None and input_ids_BP.shape[0] != 1:
        raise ValueError(f"streamer: stream one prompt at a time, got {input_ids_BP.shape[0]}")
    if attention_mask_BP is None:
        attention_mask_BP = torch.ones_like(input_ids_BP)
    ids_BP = input_ids_BP.to(lm.device)
    mask_BP = attention_mask_BP.to(lm.device)
    token = PROMPT_LENGTH.set(ids_BP.shape[1])
    try:
        with torch.random.fork_rng(devices=[lm.device] if lm.device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            run = _generate_hf if lm.backend == "hf" else _generate_tl
            return run(
                lm, ids_BP, mask_BP, max_new_tokens, do_sample, temperature, top_k, top_p,
                use_cache, stop_at_eos, streamer,
            )  # fmt: skip
    finally:
        PROMPT_LENGTH.reset(token)


def _eos_ids(lm: LanguageModel) -> list[int]:
    eos = getattr(lm.tokenizer, "eos_token_id", None) if lm.tokenizer is not None else None
    if eos is None and lm.backend == "hf":
        eos = lm.model.generation_config.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, list) else [int(eos)]


def _generate_hf(
    lm, ids_BP, mask_BP, n, do_sample, temperature, top_k, top_p, use_cache, stop, streamer
):
    from transformers import GenerationConfig

    eos = _eos_ids(lm)
    cfg = GenerationConfig(
        max_new_tokens=n,
        do_sample=do_sample,
        use_cache=use_cache,
        pad_token_id=pad_id(lm),
        eos_token_id=eos if (stop and eos) else None,
        **(
            {"temperature": temperature, "top_k": top_k or 0, "top_p": top_p or 1.0}
            if do_sample
            else {"temperature": None, "top_k": None, "top_p": None}
        ),
    )
    out_BT = lm.model.generate(
        input_ids=ids_BP, attention_mask=mask_BP, generation_config=cfg, streamer=streamer
    )
    return out_BT.cpu()


def sample_next(
    logits_BV: Tensor, do_sample: bool, temperature: float, top_k: int | None, top_p: float | None
) -> Tensor:
    """Next ids `[B]`: argmax, or a draw after temperature, top-k and top-p (nucleus) filtering."""
    if not do_sample:
        return logits_BV.argmax(-1)
    logits_BV = logits_BV.float() / temperature
    if top_k is not None and top_k < logits_BV.shape[-1]:
        kth_B1 = logits_BV.topk(top_k, dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_BV, order_BV = logits_BV.sort(dim=-1, descending=True)
        before_BV = sorted_BV.softmax(-1).cumsum(-1) - sorted_BV.softmax(-1)
        sorted_BV = sorted_BV.masked_fill(before_BV >= top_p, float("-inf"))
        logits_BV = torch.full_like(logits_BV, float("-inf")).scatter(-1, order_BV, sorted_BV)
    return torch.multinomial(logits_BV.softmax(-1), 1).squeeze(-1)


def _generate_tl(
    lm, ids_BP, mask_BP, n, do_sample, temperature, top_k, top_p, use_cache, stop, streamer
):
    """TransformerLens: one decoding loop per group of prompts with the same length."""
    lengths_B = mask_BP.sum(1)
    out_BT = torch.full((ids_BP.shape[0], ids_BP.shape[1] + n), pad_id(lm), dtype=torch.long)
    out_BT[:, : ids_BP.shape[1]] = ids_BP.cpu()
    for length in lengths_B.unique().tolist():
        rows = (lengths_B == length).nonzero().squeeze(1)
        prompt_BL = ids_BP[rows, ids_BP.shape[1] - length :]
        new_BN = _tl_loop(
            lm, prompt_BL, n, do_sample, temperature, top_k, top_p, use_cache, stop, streamer
        )
        out_BT[rows.cpu(), ids_BP.shape[1] : ids_BP.shape[1] + new_BN.shape[1]] = new_BN.cpu()
    return out_BT


def _tl_loop(
    lm, prompt_BL, n, do_sample, temperature, top_k, top_p, use_cache, stop, streamer
) -> Tensor:
    try:  # TransformerLens 2
        from transformer_lens.past_key_value_caching import (
            HookedTransformerKeyValueCache as KeyValueCache,
        )
    except ModuleNotFoundError:  # TransformerLens 3
        from transformer_lens.cache.key_value_cache import (
            TransformerLensKeyValueCache as KeyValueCache,
        )

    model = lm.model
    eos = torch.tensor(_eos_ids(lm) if stop else [], dtype=torch.long, device=prompt_BL.device)
    cache = (
        KeyValueCache.init_cache(model.cfg, model.cfg.device, prompt_BL.shape[0])
        if use_cache
        else None
    )
    seq_BT, step_BT = prompt_BL, prompt_BL
    done_B = torch.zeros(prompt_BL.shape[0], dtype=torch.bool, device=prompt_BL.device)
    new: list[Tensor] = []
    if streamer is not None:
        streamer.put(prompt_BL.cpu())
    for _ in range(n):
        if cache is None:
            logits_BTV = model(seq_BT, return_type="logits")
        else:
            logits_BTV = model(
                step_BT,
                return_type="logits",
                past_kv_cache=cache,
                attention_mask=torch.ones_like(step_BT),  # TL needs one with a cache
            )
        next_B = sample_next(logits_BTV[:, -1], do_sample, temperature, top_k, top_p)
        next_B = torch.where(done_B, torch.full_like(next_B, pad_id(lm)), next_B)
        new.append(next_B)
        if streamer is not None:
            streamer.put(next_B.cpu())
        done_B |= torch.isin(next_B, eos)
        seq_BT = torch.cat([seq_BT, next_B[:, None]], dim=1)
        step_BT = next_B[:, None]
        if done_B.all():
            break
    if streamer is not None:
        streamer.end()
    return torch.stack(new, dim=1)


def generate(
    lm: LanguageModel,
    prompts: str | Sequence[str],
    max_new_tokens: int = 40,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    prepend_bos: bool = True,
    chat: bool = False,
    use_cache: bool = True,
    stop_at_eos: bool = True,
    return_ids: bool = False,
    streamer: Any = None,
) -> str | list[str] | Generation:
    """Complete `prompts`: one string in, one completion out; a list in, a list out.

    With `return_ids=True` returns a `Generation` (completions plus the token ids);
    `streamer` is told each new token as it is chosen (see `generate_ids`).
    """
    batch = [prompts] if isinstance(prompts, str) else list(prompts)
    if not batch:
        raise ValueError("prompts is empty")
    ids_BP, mask_BP = encode_prompts(lm, batch, prepend_bos=prepend_bos, chat=chat)
    out_BT = generate_ids(
        lm, ids_BP, mask_BP, max_new_tokens, do_sample=do_sample, temperature=temperature,
        top_k=top_k, top_p=top_p, seed=seed, use_cache=use_cache, stop_at_eos=stop_at_eos,
        streamer=streamer,
    )  # fmt: skip
    new_BN = out_BT[:, ids_BP.shape[1] :]
    keep_BN = _until_eos(new_BN, _eos_ids(lm) if stop_at_eos else [])
    texts = [
        lm.tokenizer.decode(row[keep].tolist(), skip_special_tokens=False)
        for row, keep in zip(new_BN, keep_BN, strict=True)
    ]
    if return_ids:
        mask_BT = torch.cat([mask_BP, keep_BN.long()], dim=1)
        return Generation(texts, out_BT, mask_BT, ids_BP.shape[1])
    return texts[0] if isinstance(prompts, str) else texts


def _until_eos(new_BN: Tensor, eos: list[int]) -> Tensor:
    """Bool mask of the generated ids up to (not including) each row's first EOS."""
    if not eos:
        return torch.ones_like(new_BN, dtype=torch.bool)
    hit_BN = torch.isin(new_BN, torch.tensor(eos))
    return hit_BN.cumsum(1) == 0
