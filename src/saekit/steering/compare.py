"""Default against steered: completions side by side and the shift of the next-token distribution."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from saekit.analysis.logit_lens import token_strings
from saekit.models.generate import encode_prompts, generate
from saekit.steering.context import steer
from saekit.steering.interventions import Intervention

if TYPE_CHECKING:
    from saekit.models import LanguageModel


@dataclass
class TokenShift:
    """One token's probability without and with steering."""

    token: int
    text: str
    p_default: float
    p_steered: float


@dataclass
class NextTokenShift:
    """How steering changes the distribution of the first generated token.

    `kl` is KL(default || steered) in nats (as `saekit eval` reports KL(clean || spliced));
    `rose` / `fell` list the tokens whose probability rose / fell most, largest change first.
    """

    kl: float
    rose: list[TokenShift]
    fell: list[TokenShift]


def shift_between(
    lm: LanguageModel, default_logits_V: Tensor, steered_logits_V: Tensor, k: int = 10
) -> NextTokenShift:
    """KL and top rising / falling tokens between two next-token logit vectors."""
    logp_d = default_logits_V.double().log_softmax(-1)
    logp_s = steered_logits_V.double().log_softmax(-1)
    kl = float((logp_d.exp() * (logp_d - logp_s)).sum())
    diff_V = logp_s.exp() - logp_d.exp()
    k = min(k, diff_V.shape[0])
    rose_ids = diff_V.topk(k).indices.tolist()
    fell_ids = (-diff_V).topk(k).indices.tolist()
    text = dict(
        zip(rose_ids + fell_ids, token_strings(lm.tokenizer, rose_ids + fell_ids), strict=True)
    )

    def rows(ids: list[int], sign: float) -> list[TokenShift]:
        return [
            TokenShift(i, text[i], float(logp_d[i].exp()), float(logp_s[i].exp()))
            for i in ids
            if sign * float(diff_V[i]) > 0
        ]

    return NextTokenShift(kl, rows(rose_ids, 1.0), rows(fell_ids, -1.0))


@torch.no_grad()
def next_token_shift(
    lm: LanguageModel,
    prompt: str,
    interventions: Sequence[Intervention],
    k: int = 10,
    prepend_bos: bool = True,
    chat: bool = False,
) -> NextTokenShift:
    """The shift at the first generated position of `prompt` (one default, one steered forward)."""
    ids_1P, mask_1P = encode_prompts(lm, [prompt], prepend_bos=prepend_bos, chat=chat)
    default_V = lm.logits(ids_1P, mask_1P)[0, -1]
    with steer(lm, list(interventions)):
        steered_V = lm.logits(ids_1P, mask_1P)[0, -1]
    return shift_between(lm, default_V, steered_V, k)


@dataclass
class SteeringComparison:
    """`saekit steer`'s result for one prompt: both completions and the next-token shift."""

    prompt: str
    default: str
    steered: str
    kl: float
    rose: list[TokenShift]
    fell: list[TokenShift]
    interventions: list[dict]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def compare(
    lm: LanguageModel,
    prompts: str | Sequence[str],
    interventions: Sequence[Intervention],
    max_new_tokens: int = 40,
    *,
    k: int = 10,
    prepend_bos: bool = True,
    chat: bool = False,
    **generate_kwargs,
) -> list[SteeringComparison]:
    """Generate each prompt with and without the interventions (same seed) and compare."""
    batch = [prompts] if isinstance(prompts, str) else list(prompts)
    kwargs = dict(prepend_bos=prepend_bos, chat=chat, **generate_kwargs)
    default = generate(lm, batch, max_new_tokens, **kwargs)
    with steer(lm, list(interventions)) as steering:
        steered = generate(lm, batch, max_new_tokens, **kwargs)
        described = steering.describe()
    out = []
    for prompt, d, s in zip(batch, default, steered, strict=True):
        shift = next_token_shift(lm, prompt, interventions, k, prepend_bos, chat)
        out.append(SteeringComparison(prompt, d, s, shift.kl, shift.rose, shift.fell, described))
    return out
