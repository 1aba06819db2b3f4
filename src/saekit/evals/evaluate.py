"""`evaluate_sae`: every metric of an SAE on a stream of token batches, in one call."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.data import HOLDOUT_EVERY, TokenWindows, iter_documents, iter_token_batches
from saekit.evals.metrics import DENSE_THRESHOLD, RunningStats, log10_feature_density
from saekit.evals.spliced import (
    ablation_ce,
    ce_loss_recovered,
    check_sae_fits,
    sae_hooks,
    spliced_batch,
)

METRIC_KEYS = (
    "l0",
    "mse",
    "fvu",
    "explained_variance",
    "cos_sim",
    "l2_ratio",
    "ce_loss_clean",
    "ce_loss_spliced",
    "ce_loss_zero_ablation",
    "ce_loss_mean_ablation",
    "ce_loss_recovered",
    "ce_loss_recovered_mean_ablation",
    "kl_div",
    "dead_fraction",
    "dense_fraction",
    "tokens",
    "ce_tokens",
)


@torch.no_grad()
def evaluate_sae(
    sae,
    lm,
    token_batches: Iterable[tuple[Tensor, Tensor]],
    *,
    max_tokens: int | None = None,
    mean_act_D: Tensor | None = None,
    hook_name: str | None = None,
    hook_name_out: str | None = None,
    scale_in: float = 1.0,
    scale_out: float = 1.0,
    dense_threshold: float = DENSE_THRESHOLD,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate `sae` spliced into `lm` on `(input_ids_BT, keep_mask_BT)` batches.

    Reconstruction metrics use the kept positions; CE and KL use the counted positions
    (kept, not last; see `saekit.evals.spliced`). Windows (rows) are taken whole until
    `max_tokens` kept tokens are reached, so the tokens evaluated do not depend on how the
    windows are batched. Mean ablation uses `mean_act_D` if given, else the mean of the
    spliced hook's activation over the evaluated kept tokens (a second pass over the stored
    token ids). `scale_in`/`scale_out` evaluate an SAE that still trains on scaled
    activations (see `saekit.evals.spliced.reconstruct`); metrics stay in the model's raw
    units, so they match the same SAE saved with its scale folded in. The SAE is evaluated in eval mode and its previous mode restored; no
    gradient, optimizer or RNG state is touched, so the trainer may call this at any step.

    Returns the floats named in `METRIC_KEYS` plus `log10_feature_density` (a float64
    tensor `[d_sae]`, for the density histogram).
    """
    hook_in, hook_out = sae_hooks(sae, hook_name, hook_name_out)
    check_sae_fits(sae, lm, hook_in, hook_out)
    stats = RunningStats()
    sums = dict.fromkeys(("clean", "spliced", "zero", "mean", "kl"), 0.0)
    ce_tokens = 0
    seen: list[tuple[Tensor, Tensor]] = []
    was_training = sae.training
    sae.eval()
    bar = tqdm(total=max_tokens, unit="tok", desc="eval", disable=not progress)
    try:
        for input_ids_BT, keep_mask_BT in token_batches:
            if max_tokens is not None:
                if stats.tokens >= max_tokens:
                    break
                input_ids_BT, keep_mask_BT = _rows_until(
                    input_ids_BT, keep_mask_BT, max_tokens - stats.tokens
                )
            batch = spliced_batch(
                sae,
                lm,
                input_ids_BT,
                keep_mask_BT,
                mean_act_D=mean_act_D,
                hook_name=hook_in,
                hook_name_out=hook_out,
                scale_in=scale_in,
                scale_out=scale_out,
            )
            stats.update(batch.target_ND, batch.x_hat_ND, batch.feats_NF)
            bar.update(batch.x_ND.shape[0])
            ce_tokens += batch.ce_clean_M.numel()
            sums["clean"] += batch.ce_clean_M.double().sum().item()
            sums["spliced"] += batch.ce_spliced_M.double().sum().item()
            sums["zero"] += batch.ce_zero_M.double().sum().item()
            sums["kl"] += batch.kl_M.double().sum().item()
            if batch.ce_mean_M is not None:
                sums["mean"] += batch.ce_mean_M.double().sum().item()
            else:
                seen.append((input_ids_BT, keep_mask_BT))
        if stats.tokens == 0 or ce_tokens == 0:
            raise ValueError("no tokens to evaluate: the token batches are empty or all masked")
        if mean_act_D is None:
            mean_D = stats.mean_D.to(torch.float32)
            for input_ids_BT, keep_mask_BT in seen:
                ce_M = ablation_ce(lm, input_ids_BT, keep_mask_BT, hook_out, mean_D)
                sums["mean"] += ce_M.double().sum().item()
    finally:
        bar.close()
        sae.train(was_training)

    ce = {name: total / ce_tokens for name, total in sums.items()}
    result: dict[str, Any] = stats.compute(dense_threshold)
    result.update(
        ce_loss_clean=ce["clean"],
        ce_loss_spliced=ce["spliced"],
        ce_loss_zero_ablation=ce["zero"],
        ce_loss_mean_ablation=ce["mean"],
        ce_loss_recovered=ce_loss_recovered(ce["clean"], ce["spliced"], ce["zero"]),
        ce_loss_recovered_mean_ablation=ce_loss_recovered(ce["clean"], ce["spliced"], ce["mean"]),
        kl_div=ce["kl"],
        ce_tokens=ce_tokens,
        log10_feature_density=log10_feature_density(stats.density_F()),
    )
    return result


def _rows_until(input_ids_BT: Tensor, keep_mask_BT: Tensor, tokens: int) -> tuple[Tensor, Tensor]:
    """The first rows of the batch, up to the one whose kept tokens reach `tokens`."""
    cumulative_B = keep_mask_BT.sum(dim=1).cumsum(dim=0)
    rows = int((cumulative_B < tokens).sum()) + 1
    return input_ids_BT[:rows], keep_mask_BT[:rows]


def scalar_metrics(result: dict[str, Any]) -> dict[str, float | int]:
    """The JSON-friendly part of an `evaluate_sae` result, in `METRIC_KEYS` order."""
    return {key: result[key] for key in METRIC_KEYS}


def heldout_token_batches(
    dataset: str,
    tokenizer,
    context_size: int,
    rows: int,
    *,
    prepend_bos: bool = True,
    exclude_special_tokens: bool = True,
    holdout_every: int = HOLDOUT_EVERY,
    text_column: str = "text",
) -> Iterator[tuple[Tensor, Tensor]]:
    """`(input_ids_BT, keep_mask_BT)` batches of the held-back documents of `dataset`.

    Training leaves these documents out with `iter_documents(..., holdout_every=N)`;
    `holdout_every=0` evaluates on every document instead.
    """
    docs = iter_documents(
        dataset, text_column=text_column, holdout_every=holdout_every, holdout=holdout_every > 0
    )
    windows = TokenWindows(
        docs,
        tokenizer,
        context_size,
        prepend_bos=prepend_bos,
        exclude_special_tokens=exclude_special_tokens,
    )
    return iter_token_batches(windows, rows)
