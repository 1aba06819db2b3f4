"""Logit lens on SAE features: a decoder direction read through the model's unembedding.

The logit weights of feature ``f`` are ``W_dec[f] @ W_U`` (``W_U = lm.unembed_matrix()``,
``[d_model, vocab]``): how much adding the feature's direction to the residual stream raises
each token's logit, *ignoring the final norm* (as the original mats_sae_training logit-lens
tutorial did). The final RMSNorm/LayerNorm rescales the whole residual and multiplies by a
per-dimension gain; the gain can change which tokens rank first, so read these as the direct
path effect up to that scale, not as exact logit changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor


@dataclass
class LogitEffects:
    """Top boosted (``positive``) and suppressed (``negative``) tokens of one feature."""

    feature: int
    positive: list[tuple[int, str, float]]  # (token id, token text, logit weight), descending
    negative: list[tuple[int, str, float]]  # ascending: most suppressed first

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def unembed_for(sae, lm) -> Tensor:
    """``W_U [d_out, V]`` of ``lm`` on the SAE's device/dtype; checks the widths agree."""
    W_U_DV = lm.unembed_matrix()
    d_out = sae.W_dec.shape[1]
    if W_U_DV.shape[0] != d_out:
        raise ValueError(
            f"the SAE decodes to width {d_out} but the model's unembedding expects "
            f"{W_U_DV.shape[0]}: logit lens needs an SAE on the residual stream of this model"
        )
    return W_U_DV.to(sae.W_dec.device, sae.W_dec.dtype)


@torch.no_grad()
def logit_weights(sae, lm, feature_ids: Sequence[int] | None = None) -> Tensor:
    """``W_dec[feature_ids] @ W_U`` -> ``[F, V]`` (all features if ``feature_ids`` is None)."""
    W_dec_FD = sae.W_dec if feature_ids is None else sae.W_dec[list(feature_ids)]
    return W_dec_FD @ unembed_for(sae, lm)


def token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
    """The text of each token id on its own (``tokenizer.decode([id])``)."""
    return tokenizer.batch_decode([[int(i)] for i in ids])


@torch.no_grad()
def logit_effects(sae, lm, feature_ids: Sequence[int], k: int = 10) -> list[LogitEffects]:
    """Top-``k`` boosted and suppressed tokens of each feature, computed in one matmul."""
    logits_FV = logit_weights(sae, lm, feature_ids)
    k = min(k, logits_FV.shape[1])
    top_FK = logits_FV.topk(k, dim=1)
    bottom_FK = logits_FV.topk(k, dim=1, largest=False)
    ids = sorted(set(top_FK.indices.flatten().tolist()) | set(bottom_FK.indices.flatten().tolist()))
    text = dict(zip(ids, token_strings(lm.tokenizer, ids), strict=False))

    def rows(values_K: Tensor, ids_K: Tensor) -> list[tuple[int, str, float]]:
        return [
            (i, text[i], float(v)) for v, i in zip(values_K.tolist(), ids_K.tolist(), strict=False)
        ]

    return [
        LogitEffects(
            feature=int(f),
            positive=rows(top_FK.values[n], top_FK.indices[n]),
            negative=rows(bottom_FK.values[n], bottom_FK.indices[n]),
        )
        for n, f in enumerate(feature_ids)
    ]


def feature_logit_effects(sae, lm, feature: int, k: int = 10) -> LogitEffects:
    """Top-``k`` tokens that feature ``feature``'s decoder direction boosts and suppresses."""
    if not 0 <= feature < sae.W_dec.shape[0]:
        raise ValueError(f"feature {feature} out of range [0, {sae.W_dec.shape[0]})")
    return logit_effects(sae, lm, [feature], k)[0]
