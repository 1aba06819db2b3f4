"""`evaluate_sae`: every metric of an SAE on a stream of token batches, in one call."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.evals.baseline import Baseline, BaselineStore, baseline_key, compute_baseline
from saekit.evals.forward import ForkedModel, clean_losses, token_losses
from saekit.evals.intervals import SE_KEYS, UnitSums, document_units, standard_errors
from saekit.evals.metrics import (
    DENSE_THRESHOLD,
    RunningStats,
    kl_div_score,
    log10_feature_density,
)
from saekit.evals.spliced import (
    ce_loss_recovered,
    check_sae_fits,
    loss_positions,
    next_token_targets,
    reconstruct,
    reconstruction_spliced,
    sae_hooks,
)

EVAL_ROWS = 16  # windows per forward
DEFAULT_CE_TOKENS = 4096
"""Evaluated tokens that also get the spliced and ablated losses, by default (the first
windows); the reconstruction and sparsity metrics use all of them. Chosen by measurement:
see docs/performance.md ("The evaluation at the end of a run")."""
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
    "kl_div_zero_ablation",
    "kl_div_score",
    "dead_fraction",
    "dense_fraction",
    "tokens",
    "ce_tokens",
    *SE_KEYS,
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
    baselines: BaselineStore | None = None,
    ce_tokens: int | None = DEFAULT_CE_TOKENS,
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

    Returns the floats named in `METRIC_KEYS` (with bootstrap standard errors of the headline
    metrics, see `saekit.evals.intervals`) plus `log10_feature_density` (a float64 tensor
    `[d_sae]`, for the density histogram). `baselines`, `ce_tokens`: see `evaluate_saes`.
    """
    target = EvalTarget.of(sae, hook_name, hook_name_out, scale_in=scale_in, scale_out=scale_out)
    means = None if mean_act_D is None else {target.hook_out: mean_act_D}
    return evaluate_saes(
        {"sae": target}, lm, token_batches, max_tokens=max_tokens, mean_acts=means,
        dense_threshold=dense_threshold, progress=progress, baselines=baselines,
        ce_tokens=ce_tokens,
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
    baselines: BaselineStore | None = None,
    unit_sums: dict[str, UnitSums] | None = None,
    ce_tokens: int | None = DEFAULT_CE_TOKENS,
) -> dict[str, dict[str, Any]]:
    """`evaluate_sae` for several SAEs at once, sharing every forward they can share.

    The windows are regrouped into batches of `EVAL_ROWS`. The SAE-independent part (clean,
    zero- and mean-ablated losses, the residual stream at the fork; see `saekit.evals.baseline`)
    is taken from `baselines` when it holds it for this model, hooks and tokens, else computed
    once (and put there). Then each SAE costs one spliced suffix per batch: the model from its
    earliest hook on, the unembedding at the counted positions only. Each result equals
    `evaluate_sae` of that SAE alone. Given a dict `unit_sums`, each SAE's per-document sums
    (see `saekit.evals.intervals`) are put in it under the SAE's name.

    `ce_tokens`: the losses (CE, KL and their baselines) only on the first windows, until this
    many kept tokens (`DEFAULT_CE_TOKENS`), as SAEBench separates its reconstruction and
    sparsity batches; the reconstruction and sparsity metrics still use every window, read by
    forwards that stop at the last hook. None: the losses on every window too.
    """
    batches, rest, units = prepare_windows(targets, lm, token_batches, max_tokens, ce_tokens)
    sums = {name: UnitSums() for name in targets}
    if unit_sums is not None:
        unit_sums.update(sums)
    stats, totals, baseline = evaluate_windows(
        targets, lm, (batches, units[: len(batches)]), (rest, units[len(batches) :]),
        sums, mean_acts, baselines, progress, sample_ids_BT=batches[0][0][:1],
    )  # fmt: skip
    return {
        name: _result(
            stats[name], sums[name], totals[name], baseline, t.hook_out, dense_threshold
        )  # fmt: skip
        for name, t in targets.items()
    }


def prepare_windows(
    targets: Mapping[str, EvalTarget],
    lm,
    token_batches: Iterable[tuple[Tensor, Tensor]],
    max_tokens: int | None,
    ce_tokens: int | None,
) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]], list[Tensor]]:
    """Check the SAEs and settings, and regroup the windows: (those with losses, the rest,
    every window's document units), raising ValueError for nothing to evaluate."""
    if not targets:
        raise ValueError("no SAE to evaluate")
    if ce_tokens is not None and ce_tokens < 1:
        raise ValueError(f"ce_tokens must be at least 1 (None: every token), got {ce_tokens}")
    for t in targets.values():
        check_sae_fits(t.sae, lm, t.hook_in, t.hook_out)
    all_batches = eval_windows(token_batches, max_tokens, lm.device)
    if not all_batches or not any(bool(keep.any()) for _, keep in all_batches):
        raise ValueError("no tokens to evaluate: the token batches are empty or all masked")
    batches, rest = split_windows(all_batches, ce_tokens)
    if not any(bool(loss_positions(keep).any()) for _, keep in batches):
        raise ValueError("no tokens to evaluate: no kept position has a next token")
    return batches, rest, document_units([keep_BT for _, keep_BT in batches + rest])


def evaluate_windows(
    targets: Mapping[str, EvalTarget],
    lm,
    with_losses: tuple[list[tuple[Tensor, Tensor]], list[Tensor]],
    without: tuple[list[tuple[Tensor, Tensor]], list[Tensor]],
    sums: dict[str, UnitSums],
    mean_acts: Mapping[str, Tensor] | None,
    baselines: BaselineStore | None,
    progress: bool,
    sample_ids_BT: Tensor,
) -> tuple[dict[str, RunningStats], dict[str, dict[str, float]], Baseline]:
    """The passes of `evaluate_saes` over prepared batches, each with its document units: the
    baseline and spliced pass over `with_losses`, the reconstruction pass over `without`.
    Every SAE's running statistics and summed spliced CE and KL, and the baseline."""
    batches, head_units = with_losses
    rest, rest_units = without
    hooks_out = list(dict.fromkeys(t.hook_out for t in targets.values()))
    hooks = hooks_out + [t.hook_in for t in targets.values()]
    forked = ForkedModel.of(lm, hooks, sample_ids_BT)
    given = {h: m.to(lm.device) for h, m in (mean_acts or {}).items() if h in hooks_out}
    store = baselines if baselines is not None else BaselineStore()
    key = baseline_key(forked, hooks_out, batches, given)
    baseline = store.get(key, lm.device)
    if baseline is None:
        baseline = compute_baseline(forked, batches, hooks_out, given, key, progress)
        store.put(baseline)
    modes = {name: t.sae.training for name, t in targets.items()}
    for t in targets.values():
        t.sae.eval()
    stats = {name: RunningStats() for name in targets}
    bar = tqdm(total=sum(int(k.sum()) for _, k in batches + rest), unit="tok", desc="eval",
               disable=not progress)  # fmt: skip
    try:
        totals = _spliced_pass(targets, forked, batches, baseline, stats, sums, head_units, bar)
        _reconstruction_pass(targets, lm, rest, stats, sums, rest_units, bar)
    finally:
        bar.close()
        for name, t in targets.items():
            t.sae.train(modes[name])
    return stats, totals, baseline


def _spliced_pass(
    targets: Mapping[str, EvalTarget],
    forked: ForkedModel,
    batches: list[tuple[Tensor, Tensor]],
    baseline: Baseline,
    stats: dict[str, RunningStats],
    sums: dict[str, UnitSums],
    units: list[Tensor],
    bar,
) -> dict[str, dict[str, float]]:
    """Every SAE's spliced forwards; each SAE's summed spliced CE and KL."""
    totals = {name: {"spliced": 0.0, "kl": 0.0} for name in targets}
    for (input_ids_BT, keep_BT), record, units_BT in zip(
        batches, baseline.batches, units, strict=True
    ):
        positions_BT = loss_positions(keep_BT)
        targets_M = next_token_targets(input_ids_BT, positions_BT)
        units_M = units_BT[positions_BT.cpu()]
        resid_BTD = record.resid_BTD
        if resid_BTD is None:
            resid_BTD = forked.prefix(input_ids_BT)
        clean = record.clean
        if clean is None:
            clean_in_MD = forked.suffix(resid_BTD, input_ids_BT)[positions_BT]
            clean = clean_losses(forked, clean_in_MD, targets_M)[1]
        for name, t in targets.items():

            def observe(x_BTD, target_BTD, x_hat_BTD, feats_BTF, name=name, keep_BT=keep_BT,
                        units_BT=units_BT):  # fmt: skip
                keep = keep_BT.to(x_hat_BTD.device)
                stats[name].update(target_BTD[keep_BT], x_hat_BTD[keep], feats_BTF[keep])
                sums[name].add_reconstruction(target_BTD, x_hat_BTD, feats_BTF, keep_BT, units_BT)

            with reconstruction_spliced(
                forked.lm, t.sae, t.hook_in, t.hook_out, keep_BT,
                scale_in=t.scale_in, scale_out=t.scale_out, observe=observe,
            ):  # fmt: skip
                head_in_MD = forked.suffix(resid_BTD, input_ids_BT)[positions_BT]
            ce_M, kl_M = token_losses(forked, head_in_MD, targets_M, clean)
            totals[name]["spliced"] += ce_M.double().sum().item()
            totals[name]["kl"] += kl_M.double().sum().item()  # type: ignore[union-attr]
            sums[name].add_losses(
                units_M, spliced=ce_M, kl=kl_M, counted=torch.ones_like(ce_M),
                clean=record.ce_clean_M, zero=record.ce_zero_M[t.hook_out],
                kl_zero=record.kl_zero_M[t.hook_out],
            )  # fmt: skip
        bar.update(int(keep_BT.sum()))
    return totals


def _reconstruction_pass(
    targets: Mapping[str, EvalTarget],
    lm,
    batches: list[tuple[Tensor, Tensor]],
    stats: dict[str, RunningStats],
    sums: dict[str, UnitSums],
    units: list[Tensor],
    bar,
) -> None:
    """The reconstruction and sparsity metrics of windows without losses: one forward per
    batch that stops at the last hook, every SAE on the clean activations it reads."""
    hooks = list(dict.fromkeys(h for t in targets.values() for h in (t.hook_in, t.hook_out)))
    for (input_ids_BT, keep_BT), units_BT in zip(batches, units, strict=True):
        acts = lm.run_to_hooks(input_ids_BT, hooks)
        for name, t in targets.items():
            target_BTD = acts[t.hook_out]
            x_hat_BTD, feats_BTF = reconstruct(t.sae, acts[t.hook_in], t.scale_in, t.scale_out)
            keep = keep_BT.to(x_hat_BTD.device)
            stats[name].update(target_BTD[keep_BT], x_hat_BTD[keep], feats_BTF[keep])
            sums[name].add_reconstruction(target_BTD, x_hat_BTD, feats_BTF, keep_BT, units_BT)
        bar.update(int(keep_BT.sum()))


def _result(
    stats: RunningStats,
    unit_sums: UnitSums,
    totals: dict[str, float],
    baseline: Baseline,
    hook_out: str,
    dense_threshold: float,
) -> dict[str, Any]:
    def mean(parts: list[Tensor]) -> float:
        return torch.cat(parts).double().sum().item() / ce_tokens

    ce_tokens = sum(b.ce_clean_M.numel() for b in baseline.batches)
    clean = mean([b.ce_clean_M for b in baseline.batches])
    zero = mean([b.ce_zero_M[hook_out] for b in baseline.batches])
    mean_ablated = mean([b.ce_mean_M[hook_out] for b in baseline.batches])
    spliced, kl = totals["spliced"] / ce_tokens, totals["kl"] / ce_tokens
    kl_zero = mean([b.kl_zero_M[hook_out] for b in baseline.batches])
    result: dict[str, Any] = stats.compute(dense_threshold)
    result.update(
        ce_loss_clean=clean,
        ce_loss_spliced=spliced,
        ce_loss_zero_ablation=zero,
        ce_loss_mean_ablation=mean_ablated,
        ce_loss_recovered=ce_loss_recovered(clean, spliced, zero),
        ce_loss_recovered_mean_ablation=ce_loss_recovered(clean, spliced, mean_ablated),
        kl_div=kl,
        kl_div_zero_ablation=kl_zero,
        kl_div_score=kl_div_score(kl, kl_zero),
        ce_tokens=ce_tokens,
        **standard_errors(unit_sums),
        log10_feature_density=log10_feature_density(stats.density_F()),
    )
    return result


def eval_windows(
    token_batches: Iterable[tuple[Tensor, Tensor]], max_tokens: int | None, device
) -> list[tuple[Tensor, Tensor]]:
    """The evaluation windows, whole, until `max_tokens` kept tokens, in batches of `EVAL_ROWS`
    rows (consecutive windows of one length), on `device`, keep masks as bool."""
    parts: list[tuple[Tensor, Tensor]] = []
    kept = 0
    for input_ids_BT, keep_BT in token_batches:
        if max_tokens is not None:
            if kept >= max_tokens:
                break
            input_ids_BT, keep_BT = _rows_until(input_ids_BT, keep_BT, max_tokens - kept)
        kept += int(keep_BT.sum())
        parts.append((input_ids_BT, keep_BT.bool()))
    batches = []
    for _, group in itertools.groupby(parts, key=lambda part: part[0].shape[1:]):
        group = list(group)
        ids_NT = torch.cat([ids for ids, _ in group]).to(device)
        keep_NT = torch.cat([keep for _, keep in group]).to(device)
        batches += list(zip(ids_NT.split(EVAL_ROWS), keep_NT.split(EVAL_ROWS), strict=True))
    return batches


def split_windows(
    batches: list[tuple[Tensor, Tensor]], tokens: int | None
) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]]]:
    """The batches cut after the window whose kept tokens reach `tokens` (None: no cut): the
    windows up to it, and the rest, both in stream order."""
    if tokens is None:
        return batches, []
    head: list[tuple[Tensor, Tensor]] = []
    rest: list[tuple[Tensor, Tensor]] = []
    kept = 0
    for input_ids_BT, keep_BT in batches:
        if kept >= tokens:
            rest.append((input_ids_BT, keep_BT))
            continue
        ids_BT, cut_BT = _rows_until(input_ids_BT, keep_BT, tokens - kept)
        kept += int(cut_BT.sum())
        head.append((ids_BT, cut_BT))
        if ids_BT.shape[0] < input_ids_BT.shape[0]:
            rest.append((input_ids_BT[ids_BT.shape[0] :], keep_BT[ids_BT.shape[0] :]))
    return head, rest


def _rows_until(input_ids_BT: Tensor, keep_mask_BT: Tensor, tokens: int) -> tuple[Tensor, Tensor]:
    """The first rows of the batch, up to the one whose kept tokens reach `tokens`."""
    cumulative_B = keep_mask_BT.sum(dim=1).cumsum(dim=0)
    rows = int((cumulative_B < tokens).sum()) + 1
    return input_ids_BT[:rows], keep_mask_BT[:rows]


def scalar_metrics(result: dict[str, Any]) -> dict[str, float | int]:
    """The JSON-friendly part of an `evaluate_sae` result, in `METRIC_KEYS` order."""
    return {key: result[key] for key in METRIC_KEYS}
