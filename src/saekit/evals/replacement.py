"""The replacement model: every chosen MLP replaced by its transcoder's (or a cross-layer
transcoder's) output, all spliced into one forward.

Reports CE loss recovered against zero-ablating those MLPs, KL(clean || replaced) of the
next-token distributions, and per-layer FVU and L0 of the transcoders on the clean model's
activations. Inside the replaced forward each layer's MLP input comes from the replaced
stream, so errors compound as they do in circuit-tracing replacement models.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor

from saekit.evals.forward import ForkedModel, clean_losses, suffix_capturing, token_losses
from saekit.evals.spliced import ce_loss_recovered, loss_positions, next_token_targets


class Replacement:
    """Per layer: read the MLP input (`hooks_in[i]`), write the MLP output (`hooks_out[i]`).

    Built from a list of per-layer SAE transcoders (`of_transcoders`) or a CLT (`of_clt`).
    """

    def __init__(self, hooks_in: list[str], hooks_out: list[str], encode, decode):
        self.hooks_in, self.hooks_out = hooks_in, hooks_out
        self._encode, self._decode = encode, decode  # (layer, x_ND) -> f_NF; (layer, [f]) -> y

    @classmethod
    def of_transcoders(cls, saes: list, hooks_in: list[str], hooks_out: list[str]) -> Replacement:
        def decode(layer: int, feats: list[Tensor], x_ND: Tensor) -> Tensor:
            return saes[layer].add_skip(x_ND, saes[layer].decode(feats[layer]))

        return cls(hooks_in, hooks_out, lambda i, x: saes[i].encode(x), decode)

    @classmethod
    def of_clt(cls, clt, hooks_in: list[str], hooks_out: list[str]) -> Replacement:
        def decode(layer: int, feats: list[Tensor], x_ND: Tensor) -> Tensor:
            y_NO = clt.b_dec[layer].expand(x_ND.shape[0], -1)
            for src in range(layer + 1):
                y_NO = y_NO + feats[src] @ clt.W_dec[src][:, layer - src]
            return y_NO

        return cls(hooks_in, hooks_out, clt.encode_layer, decode)

    def outputs(self, xs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """(features, outputs) of every layer from every layer's input [N, D]."""
        feats = [self._encode(i, x) for i, x in enumerate(xs)]
        return feats, [self._decode(i, feats, x) for i, x in enumerate(xs)]

    def splices(self, lm, keep_mask_BT: Tensor, stack: ExitStack) -> None:
        """Splice every layer into `lm` (inside `stack`), replacing kept positions only."""
        feats: list[Tensor] = []
        inputs: list[Tensor] = []
        keep_BT1 = keep_mask_BT.unsqueeze(-1)

        def reader(layer: int):
            def read(act_BTD: Tensor) -> None:
                x_ND = act_BTD.reshape(-1, act_BTD.shape[-1])
                del feats[layer:], inputs[layer:]  # a new forward starts over
                inputs.append(x_ND)
                feats.append(self._encode(layer, x_ND))

            return read

        def writer(layer: int):
            def write(act_BTD: Tensor) -> Tensor:
                y_BTD = self._decode(layer, feats, inputs[layer]).view_as(act_BTD).to(act_BTD.dtype)
                return torch.where(keep_BT1, y_BTD, act_BTD)

            return write

        for layer, (hook_in, hook_out) in enumerate(
            zip(self.hooks_in, self.hooks_out, strict=True)
        ):
            stack.enter_context(lm.splice(hook_in, _observer(reader(layer))))
            stack.enter_context(lm.splice(hook_out, writer(layer)))


def _observer(fn):
    def observe(act_BTD: Tensor) -> Tensor:
        fn(act_BTD)
        return act_BTD

    return observe


@torch.no_grad()
def evaluate_replacement(
    replacement: Replacement, lm, batches: Iterable[tuple[Tensor, Tensor]], max_tokens: int
) -> dict[str, Any]:
    """Replacement-model metrics over batches of (input_ids_BT, keep_mask_BT): whole windows
    until `max_tokens` kept tokens, in the rows `saekit.evals.evaluate` uses, so the tokens
    are those a single-SAE evaluation of the same text sees."""
    from saekit.evals.evaluate import eval_windows

    L = len(replacement.hooks_in)
    ce = {"clean": [], "replaced": [], "ablated": []}
    kl: list[Tensor] = []
    sse, sum_sq = torch.zeros(L, dtype=torch.float64), torch.zeros(L, dtype=torch.float64)
    sums: list[Tensor | float] = [0.0] * L  # per-dimension sums of each target: the mean of all
    active = torch.zeros(L)  # tokens seen, as in `saekit.evals.metrics`
    tokens = 0
    hooks = replacement.hooks_in + replacement.hooks_out
    forked = None
    for input_ids_BT, keep_BT in eval_windows(batches, max_tokens, lm.device):
        positions_BT = loss_positions(keep_BT)
        targets_M = next_token_targets(input_ids_BT, positions_BT)
        if forked is None:  # the layers before the first hook run once per batch
            forked = ForkedModel.of(lm, hooks, input_ids_BT[:1])
        resid_BTD = forked.prefix(input_ids_BT)
        clean_in_BTD, acts = suffix_capturing(forked, resid_BTD, input_ids_BT, hooks)
        ce_clean_M, clean = clean_losses(forked, clean_in_BTD[positions_BT], targets_M)
        xs = [acts[h][keep_BT] for h in replacement.hooks_in]
        feats, ys = replacement.outputs(xs)
        for i, h in enumerate(replacement.hooks_out):
            y_ND = acts[h][keep_BT].double()
            sse[i] += (ys[i].double() - y_ND).pow(2).sum().cpu()
            sum_sq[i] += y_ND.pow(2).sum().cpu()
            sums[i] = sums[i] + y_ND.sum(0).cpu()
            active[i] += (feats[i] != 0).sum().item()
        with ExitStack() as stack:
            replacement.splices(lm, keep_BT, stack)
            replaced_in_MD = forked.suffix(resid_BTD, input_ids_BT)[positions_BT]
        ce_replaced_M, kl_M = token_losses(forked, replaced_in_MD, targets_M, clean)
        with ExitStack() as stack:
            for h in replacement.hooks_out:
                stack.enter_context(
                    lm.splice(h, lambda a, k=keep_BT: torch.where(k.unsqueeze(-1), 0.0, a))
                )
            ablated_in_MD = forked.suffix(resid_BTD, input_ids_BT)[positions_BT]
        ce["clean"].append(ce_clean_M)
        ce["replaced"].append(ce_replaced_M)
        ce["ablated"].append(token_losses(forked, ablated_in_MD, targets_M)[0])
        kl.append(kl_M)
        tokens += int(keep_BT.sum())
    if not tokens:
        raise ValueError("replacement evaluation got no tokens")
    means = {k: torch.cat(v).mean().item() for k, v in ce.items()}
    sst = sum_sq - torch.stack([torch.as_tensor(t).pow(2).sum() for t in sums]) / tokens
    return {
        "ce_loss_clean": means["clean"],
        "ce_loss_replaced": means["replaced"],
        "ce_loss_ablated": means["ablated"],
        "ce_loss_recovered": ce_loss_recovered(means["clean"], means["replaced"], means["ablated"]),
        "kl_div": torch.cat(kl).mean().item(),
        "fvu_per_layer": (sse / sst.clamp_min(1e-30)).tolist(),
        "l0_per_layer": (active / tokens).tolist(),
        "tokens": tokens,
    }
