"""`evaluate_sae`: every metric of an SAE on a stream of token batches, in one call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.evals.metrics import DENSE_THRESHOLD, RunningStats, log10_feature_density
from saekit.evals.spliced import (
    ablation_ce,
    capture_logits,
    ce_loss_recovered,
    check_sae_fits,
    loss_positions,
    next_token_ce,
    next_token_kl,
    reconstruct,
    sae_hooks,
    spliced_logits,
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


@dataclass
class EvalTarget:
    """One SAE to evaluate with `evaluate_saes`: where it reads and writes, and its scales."""

    sae: Any
    hook_in: str
    hook_out: str
    scale_in: float = 1.0
    scale_out: float = 1.0

    @classmethod
    def of(cls, sae, hook_name: str | None = None, hook_name_out: str | None = None, **scales):
        """A target with the hooks named here, else those in the SAE's cfg metadata."""
        return cls(sae, *sae_hooks(sae, hook_name, hook_name_out), **scales)


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
    units, so they match the same SAE saved with its scale folded in. The SAE is evaluated
    in eval mode and its previous mode restored; no gradient, optimizer or RNG state is
    touched, so the trainer may call this at any step.

    Returns the floats named in `METRIC_KEYS` plus `log10_feature_density` (a float64
    tensor `[d_sae]`, for the density histogram).
    """
    target = EvalTarget.of(sae, hook_name, hook_name_out, scale_in=scale_in, scale_out=scale_out)
    means = None if mean_act_D is None else {target.hook_out: mean_act_D}
    return evaluate_saes(
        {"sae": target}, lm, token_batches, max_tokens=max_tokens, mean_acts=means,
        dense_threshold=dense_threshold, progress=progress,
    )["sae"]  # fmt: skip


@torch.no_grad()
def evaluate_saes(
    targets: Mapping[str, EvalTarget],
    lm,
    token_batches: Iterable[tuple[Tensor, Tensor]],
    *,
    max_tokens: int | None = None,
    mean_acts: Mapping[str, Tensor] | None = None,
    dense_threshold: float = DENSE_THRESHOLD,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """`evaluate_sae` for several SAEs at once, sharing every forward they can share.

    Per batch: one clean forward reads every hook; each SAE gets its own spliced forward;
    each distinct output hook gets one zero-ablated forward (and one mean-ablated forward,
    with `mean_acts[hook]` or, without it, in a second pass at the evaluated mean). Each
    result equals `evaluate_sae` of that SAE alone, at a fraction of the forwards (a sweep
    of four SAEs on one hook: 7 forwards per batch instead of 16).
    """
    if not targets:
        raise ValueError("no SAE to evaluate")
    for t in targets.values():
        check_sae_fits(t.sae, lm, t.hook_in, t.hook_out)
    mean_acts = dict(mean_acts or {})
    hooks_out = list(dict.fromkeys(t.hook_out for t in targets.values()))
    read_hooks = list(dict.fromkeys(h for t in targets.values() for h in (t.hook_in, t.hook_out)))
    stats = {name: RunningStats() for name in targets}
    spliced = {name: {"spliced": 0.0, "kl": 0.0} for name in targets}
    ablations = {hook: {"zero": 0.0, "mean": 0.0} for hook in hooks_out}
    clean, ce_tokens, kept_tokens = 0.0, 0, 0
    seen: list[tuple[Tensor, Tensor]] = []
    modes = {name: t.sae.training for name, t in targets.items()}
    for t in targets.values():
        t.sae.eval()
    bar = tqdm(total=max_tokens, unit="tok", desc="eval", disable=not progress)
    try:
        for input_ids_BT, keep_mask_BT in token_batches:
            if max_tokens is not None:
                if kept_tokens >= max_tokens:
                    break
                input_ids_BT, keep_mask_BT = _rows_until(
                    input_ids_BT, keep_mask_BT, max_tokens - kept_tokens
                )
            input_ids_BT = input_ids_BT.to(lm.device)
            keep_mask_BT = keep_mask_BT.to(lm.device).bool()
            positions_BT = loss_positions(keep_mask_BT)
            clean_logits_BTV, acts = capture_logits(lm, input_ids_BT, read_hooks)
            clean_M = next_token_ce(clean_logits_BTV, input_ids_BT, positions_BT)
            clean += clean_M.double().sum().item()
            ce_tokens += clean_M.numel()
            kept_here = int(keep_mask_BT.sum())
            kept_tokens += kept_here
            bar.update(kept_here)
            for name, t in targets.items():
                x_hat_BTD, feats_BTF = reconstruct(t.sae, acts[t.hook_in], t.scale_in, t.scale_out)
                logits_BTV = spliced_logits(lm, input_ids_BT, keep_mask_BT, t.hook_out, x_hat_BTD)
                keep = keep_mask_BT.to(x_hat_BTD.device)
                stats[name].update(acts[t.hook_out][keep_mask_BT], x_hat_BTD[keep], feats_BTF[keep])
                ce_M = next_token_ce(logits_BTV, input_ids_BT, positions_BT)
                kl_M = next_token_kl(clean_logits_BTV, logits_BTV, positions_BT)
                spliced[name]["spliced"] += ce_M.double().sum().item()
                spliced[name]["kl"] += kl_M.double().sum().item()
            for hook in hooks_out:
                zero_M = ablation_ce(lm, input_ids_BT, keep_mask_BT, hook, None)
                ablations[hook]["zero"] += zero_M.double().sum().item()
                if hook in mean_acts:
                    mean_M = ablation_ce(lm, input_ids_BT, keep_mask_BT, hook, mean_acts[hook])
                    ablations[hook]["mean"] += mean_M.double().sum().item()
            if len(mean_acts) < len(hooks_out):
                seen.append((input_ids_BT, keep_mask_BT))
        if kept_tokens == 0 or ce_tokens == 0:
            raise ValueError("no tokens to evaluate: the token batches are empty or all masked")
        for hook in hooks_out:
            if hook in mean_acts:
                continue
            # the kept tokens' mean activation at the hook (the same for every SAE writing there)
            writer = next(name for name, t in targets.items() if t.hook_out == hook)
            mean_D = stats[writer].mean_D.to(torch.float32)
            for input_ids_BT, keep_mask_BT in seen:
                ce_M = ablation_ce(lm, input_ids_BT, keep_mask_BT, hook, mean_D)
                ablations[hook]["mean"] += ce_M.double().sum().item()
    finally:
        bar.close()
        for name, t in targets.items():
            t.sae.train(modes[name])

    results = {}
    for name, t in targets.items():
        ce = {"clean": clean, **spliced[name], **ablations[t.hook_out]}
        ce = {key: total / ce_tokens for key, total in ce.items()}
        result: dict[str, Any] = stats[name].compute(dense_threshold)
        result.update(
            ce_loss_clean=ce["clean"],
            ce_loss_spliced=ce["spliced"],
            ce_loss_zero_ablation=ce["zero"],
            ce_loss_mean_ablation=ce["mean"],
            ce_loss_recovered=ce_loss_recovered(ce["clean"], ce["spliced"], ce["zero"]),
            ce_loss_recovered_mean_ablation=ce_loss_recovered(
                ce["clean"], ce["spliced"], ce["mean"]
            ),
            kl_div=ce["kl"],
            ce_tokens=ce_tokens,
            log10_feature_density=log10_feature_density(stats[name].density_F()),
        )
        results[name] = result
    return results


def _rows_until(input_ids_BT: Tensor, keep_mask_BT: Tensor, tokens: int) -> tuple[Tensor, Tensor]:
    """The first rows of the batch, up to the one whose kept tokens reach `tokens`."""
    cumulative_B = keep_mask_BT.sum(dim=1).cumsum(dim=0)
    rows = int((cumulative_B < tokens).sum()) + 1
    return input_ids_BT[:rows], keep_mask_BT[:rows]


def scalar_metrics(result: dict[str, Any]) -> dict[str, float | int]:
    """The JSON-friendly part of an `evaluate_sae` result, in `METRIC_KEYS` order."""
    return {key: result[key] for key in METRIC_KEYS}
