"""Token-set enrichment over the whole dictionary: which features boost digits, names, ...

For feature ``f`` with logit weights ``l_f = W_dec[f] @ W_U`` (see :mod:`logit_lens`) and a token
set ``S``, the enrichment score is the standardized mean difference

    score(f, S) = (mean_{v in S} l_f[v] - mean_{v in vocab} l_f[v]) / std_{v in vocab} l_f[v]

i.e. by how many vocabulary standard deviations the feature lifts the set's tokens above the
average token. It is one-sided (large positive = boosts the set), comparable across features of
different norms, and costs one matmul per chunk of features. The same pass gives the moments of
each feature's logit-weight distribution (a high skew marks a feature that boosts a few tokens).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from saekit.analysis.logit_lens import token_strings, unembed_for

_PUNCT = set(string.punctuation)


def _word(s: str) -> str:
    return s.strip()


TOKEN_SETS: dict[str, Callable[[str], bool]] = {
    "digits": lambda s: _word(s).isdigit(),
    "capitalised words": lambda s: _word(s).isalpha() and _word(s)[0].isupper(),
    "all-caps words": lambda s: len(_word(s)) > 1 and _word(s).isalpha() and _word(s).isupper(),
    "lowercase words": lambda s: _word(s).isalpha() and _word(s).islower(),
    "space-prefixed words": lambda s: s.startswith(" ") and s[1:].isalpha(),
    "word pieces (no leading space)": lambda s: s.isalpha(),
    "punctuation": lambda s: bool(_word(s)) and all(c in _PUNCT for c in _word(s)),
    "whitespace and newlines": lambda s: bool(s) and not s.strip(),
}
"""Built-in token sets: name -> predicate on the token's decoded text."""


def token_set_masks(
    tokenizer, vocab_size: int, sets: dict[str, Callable[[str], bool]] | None = None
) -> dict[str, Tensor]:
    """Boolean ``[V]`` mask of each token set (ids beyond the tokenizer's vocab are in none)."""
    sets = TOKEN_SETS if sets is None else sets
    n = min(vocab_size, len(tokenizer))
    texts = token_strings(tokenizer, range(n))
    special = set(tokenizer.all_special_ids)
    masks = {}
    for name, member in sets.items():
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[:n] = torch.tensor([i not in special and member(t) for i, t in enumerate(texts)])
        masks[name] = mask
    return masks


@torch.no_grad()
def token_set_enrichment(
    sae,
    lm,
    sets: dict[str, Callable[[str], bool]] | None = None,
    *,
    chunk: int = 512,
) -> tuple[Tensor, list[str], dict[str, Tensor]]:
    """Scores ``[d_sae, S]`` of every feature for every token set (formula in the module doc).

    Returns ``(scores_FS, set_names, logit_stats)``; ``logit_stats`` maps ``mean``, ``std``,
    ``skew``, ``kurtosis`` to ``[d_sae]`` tensors of each feature's logit-weight distribution.
    Empty sets are dropped.
    """
    W_U_DV = unembed_for(sae, lm)
    masks = {
        k: v for k, v in token_set_masks(lm.tokenizer, W_U_DV.shape[1], sets).items() if v.any()
    }
    names = list(masks)
    if not names:
        raise ValueError("every token set is empty for this tokenizer")
    member_VS = torch.stack([masks[n] for n in names], dim=1).to(W_U_DV)
    set_mean_VS = member_VS / member_VS.sum(0)
    scores, stats = [], {"mean": [], "std": [], "skew": [], "kurtosis": []}
    for start in range(0, sae.W_dec.shape[0], chunk):
        logits_FV = (sae.W_dec[start : start + chunk] @ W_U_DV).double()
        mean_F = logits_FV.mean(1)
        centred_FV = logits_FV - mean_F[:, None]
        std_F = centred_FV.pow(2).mean(1).sqrt().clamp_min(1e-12)
        z_FV = centred_FV / std_F[:, None]
        scores.append((z_FV @ set_mean_VS.double()).float())
        stats["mean"].append(mean_F)
        stats["std"].append(std_F)
        stats["skew"].append(z_FV.pow(3).mean(1))
        stats["kurtosis"].append(z_FV.pow(4).mean(1))
    return torch.cat(scores), names, {k: torch.cat(v).float().cpu() for k, v in stats.items()}


def top_features_per_set(
    scores_FS: Tensor, set_names: Sequence[str], n: int = 10
) -> dict[str, list[tuple[int, float]]]:
    """The ``n`` highest-scoring features of each set: ``{set: [(feature, score), ...]}``."""
    top = scores_FS.topk(min(n, scores_FS.shape[0]), dim=0)
    return {
        name: [
            (int(i), float(v)) for v, i in zip(top.values[:, s], top.indices[:, s], strict=False)
        ]
        for s, name in enumerate(set_names)
    }
