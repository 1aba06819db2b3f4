"""One evaluation spread over ranks: each rank evaluates every `world`-th batch of windows,
rank 0 merges the parts into the results `evaluate_saes` gives.

Under torchrun every rank holds the model and (replicate placement) every SAE, so the final
evaluation need not run on rank 0 alone while the others wait:

    part = evaluate_part(targets, lm, batches, rank, world, max_tokens=cfg.eval_tokens)
    parts = gather_to_rank_0(part)                      # e.g. dist.gather_object
    if rank == 0:
        results = merge_parts(parts)

The mean activation the mean ablation uses is computed by every rank over all the loss
windows (one forward to the hook each, about a seventh of their losses' cost), so the ranks
need no collective in between. The merged results equal `evaluate_saes` on all windows up to
float rounding (a test checks this), standard errors included: the document units are
numbered over all windows on every rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saekit.evals.baseline import Baseline, BatchBaseline
from saekit.evals.evaluate import (
    DEFAULT_CE_TOKENS,
    EvalTarget,
    _result,
    evaluate_windows,
    prepare_windows,
)
from saekit.evals.intervals import UnitSums
from saekit.evals.metrics import DENSE_THRESHOLD, RunningStats


@dataclass
class EvalPart:
    """One rank's share: per SAE its statistics, unit sums and summed spliced CE and KL; the
    SAE-independent losses of its loss windows; the ablation means; each SAE's output hook."""

    stats: dict[str, RunningStats]
    sums: dict[str, UnitSums]
    totals: dict[str, dict[str, float]]
    losses: list[BatchBaseline]
    means: dict[str, Tensor]
    hooks_out: dict[str, str] = field(default_factory=dict)


@torch.no_grad()
def evaluate_part(
    targets: Mapping[str, EvalTarget],
    lm,
    token_batches: Iterable[tuple[Tensor, Tensor]],
    rank: int,
    world: int,
    *,
    max_tokens: int | None = None,
    ce_tokens: int | None = DEFAULT_CE_TOKENS,
) -> EvalPart:
    """This rank's part of `evaluate_saes(targets, lm, token_batches, ...)`: the batches of
    windows `rank, rank + world, ...`, of those with losses and of the rest."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world), got rank={rank}, world={world}")
    batches, rest, units = prepare_windows(targets, lm, token_batches, max_tokens, ce_tokens)
    hooks_out = {name: t.hook_out for name, t in targets.items()}
    means = ablation_means(lm, batches, list(dict.fromkeys(hooks_out.values())))
    sums = {name: UnitSums() for name in targets}
    mine = slice(rank, None, world)
    stats, totals, baseline = evaluate_windows(
        targets, lm, (batches[mine], units[: len(batches)][mine]),
        (rest[mine], units[len(batches) :][mine]), sums, means, None, False,
        sample_ids_BT=batches[0][0][:1],
    )  # fmt: skip
    losses = [BatchBaseline(b.ce_clean_M, b.ce_zero_M, b.ce_mean_M, b.kl_zero_M)
              for b in baseline.batches]  # fmt: skip
    return EvalPart(stats, sums, totals, losses, means, hooks_out)


def merge_parts(
    parts: list[EvalPart], dense_threshold: float = DENSE_THRESHOLD
) -> dict[str, dict[str, Any]]:
    """Every SAE's result from all ranks' parts (in any order)."""
    first = parts[0]
    baseline = Baseline("", [b for part in parts for b in part.losses], first.means)
    results = {}
    for name, hook_out in first.hooks_out.items():
        stats, sums = RunningStats(), UnitSums()
        totals = {"spliced": 0.0, "kl": 0.0}
        for part in parts:
            stats.merge(part.stats[name])
            sums.merge(part.sums[name])
            for key in totals:
                totals[key] += part.totals[name][key]
        results[name] = _result(stats, sums, totals, baseline, hook_out, dense_threshold)
    return results


def evaluate_across_ranks(
    targets: Mapping[str, EvalTarget],
    lm,
    token_batches: Iterable[tuple[Tensor, Tensor]],
    dense_threshold: float = DENSE_THRESHOLD,
    **options: Any,
) -> dict[str, dict[str, Any]] | None:
    """`evaluate_saes` spread over the ranks of the current process group: every rank
    evaluates its part (`evaluate_part`, with `options` such as `max_tokens` and `ce_tokens`),
    rank 0 gathers and merges them. The results on rank 0, None on the others."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    part = evaluate_part(targets, lm, token_batches, rank, world, **options)
    parts: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(part, parts, dst=0)
    return merge_parts(parts, dense_threshold) if parts is not None else None


def ablation_means(lm, batches: list[tuple[Tensor, Tensor]], hooks: list[str]) -> dict[str, Tensor]:
    """The mean activation at each hook over the kept positions of `batches` (float64 sums,
    as `compute_baseline` takes them), by forwards that stop at the hooks."""
    totals: dict[str, list] = {hook: [0.0, 0] for hook in hooks}
    for input_ids_BT, keep_BT in batches:
        acts = lm.run_to_hooks(input_ids_BT, hooks)
        for hook in hooks:
            kept_ND = acts[hook][keep_BT.to(acts[hook].device)].double()
            totals[hook][0] = totals[hook][0] + kept_ND.sum(dim=0)
            totals[hook][1] += kept_ND.shape[0]
    return {
        hook: (total_D / n).float() if n else torch.zeros(lm.hook_dim(hook))
        for hook, (total_D, n) in totals.items()
    }
