"""A test helper: one batch's clean, spliced and ablated per-token losses, composed from the
primitives `saekit.evals.evaluate` uses (`ForkedModel`, `clean_losses`, `token_losses`,
`reconstruction_spliced`, `ablated_ce`), so tests can check them token by token against a
hand-written splice. The library itself evaluates through `evaluate_saes`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.evals.spliced import (
    check_sae_fits,
    loss_positions,
    next_token_targets,
    reconstruction_spliced,
    sae_hooks,
)


@dataclass
class SplicedBatch:
    """One batch's evaluation: kept-position activations and per-counted-position losses.

    Attributes:
        x_ND: SAE input at the kept positions (transcoders: the activation at `hook_name`).
        target_ND: activation the SAE reconstructs at the kept positions (= `x_ND` for an SAE).
        x_hat_ND: the SAE's reconstruction at the kept positions.
        feats_NF: feature activations at the kept positions.
        ce_clean_M, ce_spliced_M, ce_zero_M: next-token CE at the M counted positions.
        ce_mean_M: the same under mean ablation, when a mean was given.
        kl_M: KL(clean || spliced) of the next-token distribution at the counted positions.
    """

    x_ND: Tensor
    target_ND: Tensor
    x_hat_ND: Tensor
    feats_NF: Tensor
    ce_clean_M: Tensor
    ce_spliced_M: Tensor
    ce_zero_M: Tensor
    ce_mean_M: Tensor | None
    kl_M: Tensor


@torch.no_grad()
def spliced_batch(
    sae,
    lm,
    input_ids_BT: Tensor,
    keep_mask_BT: Tensor,
    *,
    keep_error: bool = False,
    mean_act_D: Tensor | None = None,
    hook_name: str | None = None,
    hook_name_out: str | None = None,
    scale_in: float = 1.0,
    scale_out: float = 1.0,
) -> SplicedBatch:
    """Evaluate the SAE on one batch: the clean, spliced, zero-ablated and (given `mean_act_D`)
    mean-ablated forwards, all forked from one run of the layers before the hooks.
    `scale_in`/`scale_out`: see `reconstruct`."""
    from saekit.evals.baseline import ablated_ce
    from saekit.evals.forward import ForkedModel, clean_losses, token_losses

    hook_in, hook_out = sae_hooks(sae, hook_name, hook_name_out)
    check_sae_fits(sae, lm, hook_in, hook_out)
    input_ids_BT = input_ids_BT.to(lm.device)
    keep_mask_BT = keep_mask_BT.to(lm.device).bool()
    positions_BT = loss_positions(keep_mask_BT)
    targets_M = next_token_targets(input_ids_BT, positions_BT)
    forked = ForkedModel.of(lm, [hook_in, hook_out], input_ids_BT[:1])
    resid_BTD = forked.prefix(input_ids_BT)
    clean_in_MD = forked.suffix(resid_BTD, input_ids_BT)[positions_BT]
    ce_clean_M, clean = clean_losses(forked, clean_in_MD, targets_M)
    seen: dict[str, Tensor] = {}

    def observe(x_BTD, target_BTD, x_hat_BTD, feats_BTF):
        keep = keep_mask_BT.to(x_hat_BTD.device)
        seen.update(x=x_BTD[keep_mask_BT], target=target_BTD[keep_mask_BT],
                    x_hat=x_hat_BTD[keep], feats=feats_BTF[keep])  # fmt: skip

    with reconstruction_spliced(
        lm, sae, hook_in, hook_out, keep_mask_BT, scale_in=scale_in, scale_out=scale_out,
        keep_error=keep_error, observe=observe,
    ):  # fmt: skip
        spliced_in_MD = forked.suffix(resid_BTD, input_ids_BT)[positions_BT]
    ce_spliced_M, kl_M = token_losses(forked, spliced_in_MD, targets_M, clean)
    args = (forked, resid_BTD, input_ids_BT, keep_mask_BT, hook_out)
    return SplicedBatch(
        x_ND=seen["x"],
        target_ND=seen["target"],
        x_hat_ND=seen["x_hat"],
        feats_NF=seen["feats"],
        ce_clean_M=ce_clean_M,
        ce_spliced_M=ce_spliced_M,
        ce_zero_M=ablated_ce(*args, None),
        ce_mean_M=None if mean_act_D is None else ablated_ce(*args, mean_act_D),
        kl_M=kl_M,  # type: ignore[arg-type]
    )
