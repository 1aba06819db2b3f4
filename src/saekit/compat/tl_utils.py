"""The four `transformer_lens.utils` helpers the original tutorials call, for saekit models.

`get_act_name`, `test_prompt`, `to_numpy`, `tokenize_and_concatenate` behave as
TransformerLens 2.x's do on the calls the tutorials make. TransformerLens itself works too
(its `utils.test_prompt` only calls `to_tokens`, `to_str_tokens`, `to_string` and the model,
which `HookedLanguageModel` answers); but TransformerLens 4 removed `transformer_lens.utils`,
and 2.x/3.x pin other library versions, so the notebooks import these:

```python
from saekit.compat import tl_utils as utils
```
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from torch import Tensor

_BLOCK_NAMES = {
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
    "pre": "mlp.hook_pre", "post": "mlp.hook_post", "q": "attn.hook_q", "k": "attn.hook_k",
    "v": "attn.hook_v", "z": "attn.hook_z", "pattern": "attn.hook_pattern",
    "attn_scores": "attn.hook_attn_scores", "scale": "ln1.hook_scale",
    "normalized": "ln1.hook_normalized",
}  # fmt: skip
_TOP_NAMES = {"embed": "hook_embed", "pos_embed": "hook_pos_embed"}


def get_act_name(name: str, layer: int | str | None = None, layer_type: str | None = None) -> str:
    """Full hook name from a short one: `get_act_name("resid_pre", 8)` -> `blocks.8.hook_resid_pre`.

    Also `"resid_pre8"`, and a full name is returned unchanged. `layer_type` picks the norm of
    `scale`/`normalized` hooks (`ln1`, `ln2`, `ln_final`).
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    match = re.fullmatch(r"([a-z_]+?)(\d+)([a-z]*\d*)", name)
    if match is not None and layer is None:
        name, layer, layer_type = match.group(1), int(match.group(2)), match.group(3) or None
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    if name not in _BLOCK_NAMES:
        raise ValueError(f"unknown activation name {name!r}; known: {sorted(_BLOCK_NAMES)}")
    if layer is None:
        raise ValueError(f"{name!r} needs a layer")
    suffix = _BLOCK_NAMES[name]
    if layer_type in ("ln2", "ln1") and name in ("scale", "normalized"):
        suffix = f"{layer_type}.hook_{name}"
    return f"blocks.{int(layer)}.{suffix}"


def to_numpy(tensor: Any) -> np.ndarray:
    """A tensor (any device), list or number as a numpy array."""
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, Tensor):
        return tensor.detach().cpu().numpy()
    return np.array(tensor)


def test_prompt(
    prompt: str,
    answer: str,
    model: Any,
    prepend_space_to_answer: bool = True,
    print_details: bool = True,
    prepend_bos: bool | None = None,
    top_k: int = 10,
) -> list[tuple[str, int]]:
    """Print how the model ranks each token of `answer` after `prompt` (rank, logit,
    probability, and the top `top_k` tokens); return `[(answer token, rank), ...]`."""
    if prepend_space_to_answer and not answer.startswith(" "):
        answer = " " + answer
    prompt_BT = model.to_tokens(prompt, prepend_bos=prepend_bos)
    answer_BT = model.to_tokens(answer, prepend_bos=False)
    tokens_BT = torch.cat([prompt_BT, answer_BT.to(prompt_BT.device)], dim=1)
    prompt_str = model.to_str_tokens(prompt, prepend_bos=prepend_bos)
    answer_str = model.to_str_tokens(answer, prepend_bos=False)
    if print_details:
        print("Tokenized prompt:", prompt_str)
        print("Tokenized answer:", answer_str)
    logits_TV = model(tokens_BT, return_type="logits")[0].float()
    probs_TV = logits_TV.softmax(dim=-1)
    ranks = []
    for i, token in enumerate(answer_BT[0].tolist()):
        pos = prompt_BT.shape[1] + i - 1  # the position that predicts this token
        order_V = probs_TV[pos].argsort(descending=True)
        rank = int((order_V == token).nonzero()[0, 0])
        ranks.append((answer_str[i], rank))
        if print_details:
            print("Performance on answer token:")
            print(f"Rank: {rank: <8} Logit: {logits_TV[pos, token]:5.2f} Prob: "
                  f"{probs_TV[pos, token]:6.2%} Token: |{answer_str[i]}|")  # fmt: skip
            for j, top in enumerate(order_V[:top_k].tolist()):
                print(f"Top {j}th token. Logit: {logits_TV[pos, top]:5.2f} Prob: "
                      f"{probs_TV[pos, top]:6.2%} Token: |{model.to_string(top)}|")  # fmt: skip
    print(f"Ranks of the answer tokens: {ranks}")
    return ranks


test_prompt.__test__ = False  # not a pytest test


def tokenize_and_concatenate(
    dataset: Any,
    tokenizer: Any,
    streaming: bool = False,
    max_length: int = 1024,
    column_name: str = "text",
    add_bos_token: bool = True,
    num_proc: int | None = None,
) -> Any:
    """Rows of `max_length` tokens (BOS first) from the documents of a `datasets.Dataset`,
    joined with EOS: a dataset with one column `tokens`, formatted as torch tensors."""
    from datasets import Dataset

    body = max_length - 1 if add_bos_token else max_length
    stream: list[int] = []
    for i, text in enumerate(dataset[column_name]):
        if i:
            stream.append(tokenizer.eos_token_id)
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    n_rows = len(stream) // body
    rows_NB = np.asarray(stream[: n_rows * body], dtype=np.int64).reshape(n_rows, body)
    if add_bos_token:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        rows_NB = np.concatenate([np.full((n_rows, 1), bos, dtype=np.int64), rows_NB], axis=1)
    out = Dataset.from_dict({"tokens": rows_NB.tolist()})
    out.set_format(type="torch", columns=["tokens"])
    return out
