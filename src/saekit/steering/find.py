"""Finding features to steer: by the token they promote, by where they fire, by what they do.

- `features_for_token`: the features whose decoder direction raises a token's logit most
  (logit lens `W_dec[f] @ W_U[:, token]`, final norm not applied, as in `analysis.logit_lens`);
- `text_features`: the most active features at each token of a text;
- `ablation_effects`: the change in next-token loss when each active feature is ablated,
  from batched forwards (many ablations per forward);
- `typical_activations`: each feature's mean activation where it fires (for `units="act"`);
- `logit_concentration`: each feature's logit-lens top token and how much it stands out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from saekit.analysis.logit_lens import token_strings, unembed_for
from saekit.models.generate import encode_prompts
from saekit.steering.interventions import sae_source

if TYPE_CHECKING:
    from saekit.models import LanguageModel
    from saekit.saes import SAE


def single_token_id(lm: LanguageModel, token: str | int) -> int:
    """The id of `token` (an id, or text that must be exactly one token, e.g. " Python")."""
    if isinstance(token, int):
        vocab = lm.unembed_matrix().shape[1]
        if not 0 <= token < vocab:
            raise ValueError(f"token id {token} is out of range: the vocabulary has {vocab}")
        return token
    ids = lm.tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = token_strings(lm.tokenizer, ids)
        raise ValueError(
            f"token={token!r} is {len(ids)} tokens {pieces}, not one: pass a single token "
            "(mind the leading space, e.g. ' Python')"
        )
    return int(ids[0])


@dataclass
class FeatureScore:
    """A feature and a number about it (logit weight, activation, loss change...)."""

    feature: int
    score: float


@torch.no_grad()
def features_for_token(
    sae: SAE, lm: LanguageModel, token: str | int, k: int = 10
) -> list[FeatureScore]:
    """The `k` features whose decoder direction boosts `token`'s logit most (logit lens)."""
    tid = single_token_id(lm, token)
    column_D = unembed_for(sae, lm)[:, tid]
    scores_F = sae.W_dec @ column_D
    top = scores_F.topk(min(k, scores_F.shape[0]))
    return [FeatureScore(int(f), float(s)) for s, f in zip(top.values, top.indices, strict=True)]


@torch.no_grad()
def logit_concentration(sae: SAE, lm: LanguageModel, chunk: int = 512) -> tuple[Tensor, Tensor]:
    """Per feature: its logit-lens top token `[F]` and that token's z-score `[F]`.

    The z-score `(max - mean) / std` of the feature's logit weights over the vocabulary says
    how much one token stands out from the rest: high for features that promote one token.
    """
    W_U_DV = unembed_for(sae, lm)
    tops, scores = [], []
    for start in range(0, sae.W_dec.shape[0], chunk):
        logits_CV = sae.W_dec[start : start + chunk] @ W_U_DV
        best = logits_CV.max(dim=1)
        z_C = (best.values - logits_CV.mean(1)) / logits_CV.std(1).clamp_min(1e-12)
        tops.append(best.indices)
        scores.append(z_C)
    return torch.cat(tops), torch.cat(scores)


def _text_ids(sae: SAE, lm: LanguageModel, text: str) -> Tensor:
    ids_1T, _ = encode_prompts(lm, [text], prepend_bos=sae_source(sae).prepend_bos)
    return ids_1T


def _features_of(sae: SAE, lm: LanguageModel, ids_BT: Tensor) -> Tensor:
    """SAE features `[B, T, F]` of the model's activations at the SAE's input hook."""
    hook = sae_source(sae).hook_name
    if hook is None:
        raise ValueError("the SAE's cfg.json names no metadata.hook_name")
    x_BTD = lm.run_to_hooks(ids_BT, [hook])[hook]
    with torch.no_grad():
        return sae.encode(x_BTD.to(sae.W_dec.device, sae.W_dec.dtype))


@dataclass
class TextFeatures:
    """The most active features at each token of a text."""

    tokens: list[str]
    features: list[list[FeatureScore]]  # per token, activation descending (active only)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


@torch.no_grad()
def text_features(sae: SAE, lm: LanguageModel, text: str, k: int = 5) -> TextFeatures:
    """The `k` most active features (activation > 0) at each token of `text`."""
    ids_1T = _text_ids(sae, lm, text)
    f_TF = _features_of(sae, lm, ids_1T)[0]
    top = f_TF.topk(min(k, f_TF.shape[1]), dim=1)
    rows = [
        [FeatureScore(int(i), float(v)) for v, i in zip(vals, idx, strict=True) if v > 0]
        for vals, idx in zip(top.values, top.indices, strict=True)
    ]
    return TextFeatures(token_strings(lm.tokenizer, ids_1T[0].tolist()), rows)


@dataclass
class AblationEffect:
    """The change in next-token loss (nats) when one feature is ablated (error term kept).

    `delta_loss` averages over the text's predicted positions; `max_delta` is the largest
    change at one position; `positions` counts where the feature was active.
    """

    feature: int
    delta_loss: float
    max_delta: float
    positions: int


@torch.no_grad()
def ablation_effects(
    sae: SAE,
    lm: LanguageModel,
    text: str,
    features: Sequence[int] | None = None,
    batch_size: int = 32,
) -> tuple[float, list[AblationEffect]]:
    """Clean next-token loss of `text` and the effect of ablating each active feature.

    Each feature is ablated at every position (`x - f(x) W_dec[f]`, the SAE's error kept);
    `batch_size` ablations share one forward. `features` defaults to every feature active
    somewhere in the text except at BOS. Sorted by `delta_loss`, largest first.
    """
    src = sae_source(sae)
    if sae.cfg.is_transcoder:
        raise ValueError("ablation_effects supports SAEs, not transcoders (hook_name_out set)")
    hook = src.hook_name
    ids_1T = _text_ids(sae, lm, text)
    if ids_1T.shape[1] < 2:
        raise ValueError(f"text={text!r} is too short: it needs at least one predicted token")
    targets_T = ids_1T[0, 1:].to(lm.device)
    clean_T = F.cross_entropy(lm.logits(ids_1T)[0, :-1].float(), targets_T, reduction="none")
    x_1TD = lm.run_to_hooks(ids_1T, [hook])[hook]
    f_TF = sae.encode(x_1TD[0].to(sae.W_dec.device, sae.W_dec.dtype))
    keep_T = torch.ones(f_TF.shape[0], dtype=torch.bool, device=f_TF.device)
    if src.prepend_bos and lm.bos_token_id is not None and int(ids_1T[0, 0]) == lm.bos_token_id:
        keep_T[0] = False
    f_TF = f_TF * keep_T.unsqueeze(1)  # BOS is neither counted nor ablated
    if features is None:
        features = (f_TF > 0).any(0).nonzero().squeeze(1).tolist()
    feats = [int(f) for f in features]
    for f in feats:
        if not 0 <= f < sae.cfg.d_sae:
            raise ValueError(f"feature {f} is out of range: the SAE has d_sae={sae.cfg.d_sae}")
    effects: list[AblationEffect] = []
    for start in range(0, len(feats), batch_size):
        chunk = torch.tensor(feats[start : start + batch_size], device=f_TF.device)
        # residual with feature chunk[n] ablated: x - f_n(x) W_dec[n], in row n of the batch
        delta_NTD = f_TF[:, chunk].T.unsqueeze(-1) * sae.W_dec[chunk].unsqueeze(1)
        x_NTD = x_1TD.to(delta_NTD.device) - delta_NTD.to(x_1TD.dtype)
        ids_NT = ids_1T.expand(len(chunk), -1)
        with lm.splice(hook, lambda _x, x_NTD=x_NTD: x_NTD.to(_x.device)):
            logits_NTV = lm.logits(ids_NT)[:, :-1].float()
        loss_NT = F.cross_entropy(
            logits_NTV.flatten(0, 1), targets_T.repeat(len(chunk)), reduction="none"
        ).view(len(chunk), -1)
        diff_NT = loss_NT - clean_T
        active_N = (f_TF[:, chunk] > 0).sum(0)
        for n, f in enumerate(chunk.tolist()):
            effects.append(
                AblationEffect(
                    f, float(diff_NT[n].mean()), float(diff_NT[n].abs().max()), int(active_N[n])
                )
            )
    effects.sort(key=lambda e: e.delta_loss, reverse=True)
    return float(clean_T.mean()), effects


@torch.no_grad()
def typical_activations(
    sae: SAE, lm: LanguageModel, texts: Sequence[str], max_tokens: int = 8192, context: int = 128
) -> Tensor:
    """Mean activation of each feature where it fires (> 0) over `texts`, `[d_sae]` (NaN: never).

    Positions holding BOS are left out. Used for `units="act"`: strength 1 is a typical firing.
    """
    sum_F = torch.zeros(sae.cfg.d_sae, dtype=torch.float64, device=sae.W_dec.device)
    count_F = torch.zeros_like(sum_F)
    seen = 0
    for text in texts:
        ids_1T = _text_ids(sae, lm, text)[:, :context]
        f_TF = _features_of(sae, lm, ids_1T)[0].double()
        if lm.bos_token_id is not None:
            f_TF = f_TF[ids_1T[0].to(f_TF.device) != lm.bos_token_id]
        sum_F += f_TF.sum(0)
        count_F += (f_TF > 0).sum(0)
        seen += f_TF.shape[0]
        if seen >= max_tokens:
            break
    if seen == 0:
        raise ValueError("typical_activations: the texts hold no tokens")
    return (sum_F / count_F).float()
