"""Evaluating a crosscoder: per-source FVU and L0 on held-back text, and, for a
model-diffing crosscoder, which features are shared and which belong to one model.

A feature's relative decoder norm is `r = |d_b| / (|d_a| + |d_b|)` (source a: the base model,
b: the fine-tuned one), with the decoder norms in the units the crosscoder trained in (each
source scaled to mean norm sqrt(D): `norm_scales` in its metadata). Classes: `a_only`
(r < 0.1), `b_only` (r > 0.9), `shared` (0.3 <= r <= 0.7), `between` (the rest) and `dead`
(both decoders zero, or the feature never fired on the evaluated tokens).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.saes.crosscoder import Crosscoder, relative_decoder_norms

ONLY_BELOW, ONLY_ABOVE = 0.1, 0.9
SHARED_RANGE = (0.3, 0.7)
HISTOGRAM_BINS = 20


def training_unit_decoders(cc: Crosscoder) -> Tensor:
    """`W_dec [F, S, D]` in the units the crosscoder trained in (raw-unit decoders times each
    source's normalisation scale, when the folder records them)."""
    scales = cc.cfg.metadata.extra.get("norm_scales")
    W_FSD = cc.W_dec.detach().float()
    if scales is None:
        return W_FSD
    return W_FSD * torch.tensor(scales, dtype=W_FSD.dtype, device=W_FSD.device)[None, :, None]


def diff_summary(cc: Crosscoder, fired_F: Tensor | None = None) -> dict[str, Any]:
    """Counts of shared / one-model features, the histogram of r over live features, and
    the features most specific to each model (by r, then by decoder norm)."""
    W_FSD = training_unit_decoders(cc)
    r_F = relative_decoder_norms(W_FSD).cpu()
    dead_F = ~torch.isfinite(r_F)
    if fired_F is not None:
        dead_F |= ~fired_F.cpu().bool()
    live = r_F[~dead_F]
    counts, edges = torch.histogram(live.double(), bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    b_only = (~dead_F & (r_F > ONLY_ABOVE)).nonzero().flatten()
    a_only = (~dead_F & (r_F < ONLY_BELOW)).nonzero().flatten()
    norm_b = W_FSD[:, 1].norm(dim=-1).cpu()
    norm_a = W_FSD[:, 0].norm(dim=-1).cpu()
    return {
        "n_features": int(r_F.numel()),
        "dead": int(dead_F.sum()),
        "a_only": int(a_only.numel()),
        "b_only": int(b_only.numel()),
        "shared": int((~dead_F & (r_F >= SHARED_RANGE[0]) & (r_F <= SHARED_RANGE[1])).sum()),
        "between": int(
            (~dead_F & (r_F >= ONLY_BELOW) & (r_F <= ONLY_ABOVE)).sum()
            - (~dead_F & (r_F >= SHARED_RANGE[0]) & (r_F <= SHARED_RANGE[1])).sum()
        ),
        "histogram_counts": counts.long().tolist(),
        "histogram_edges": edges.tolist(),
        "b_only_features": b_only[norm_b[b_only].argsort(descending=True)].tolist(),
        "highest_r_features": _live_order(r_F, dead_F, descending=True)[:20],
        "lowest_r_features": _live_order(r_F, dead_F, descending=False)[:20],
        "a_only_features": a_only[norm_a[a_only].argsort(descending=True)].tolist(),
        "relative_norm": r_F,
    }


def _live_order(r_F: Tensor, dead_F: Tensor, descending: bool) -> list[int]:
    live = (~dead_F).nonzero().flatten()
    return live[r_F[live].argsort(descending=descending)].tolist()


def plot_relative_norms(
    summary: dict[str, Any], path: str | Path, names: tuple[str, str] = ("base", "other")
) -> Path:
    """Histogram of the relative decoder norms of live features, classes shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from saekit.fileio import save_figure

    fig, ax = plt.subplots(figsize=(6, 3.5))
    edges, counts = summary["histogram_edges"], summary["histogram_counts"]
    ax.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge", color="#4c72b0")
    ax.axvspan(0, ONLY_BELOW, color="#dd8452", alpha=0.2, label=f"{names[0]} only")
    ax.axvspan(ONLY_ABOVE, 1, color="#55a868", alpha=0.2, label=f"{names[1]} only")
    ax.axvspan(*SHARED_RANGE, color="grey", alpha=0.15, label="shared")
    ax.set_xlabel(f"relative decoder norm |d_{names[1]}| / (|d_{names[0]}| + |d_{names[1]}|)")
    ax.set_ylabel("features")
    ax.set_yscale("symlog")
    ax.set_title(
        f"shared {summary['shared']}, {names[0]} only {summary['a_only']}, "
        f"{names[1]} only {summary['b_only']}, dead {summary['dead']}"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=120)
    return path


@torch.no_grad()
def evaluate_crosscoder(
    cc: Crosscoder, batches: Iterable[dict[str, Tensor]], sources: list[str], max_tokens: int
) -> dict[str, Any]:
    """Per-source FVU (float64), L0, and which features fired, over the first `max_tokens`
    rows of activation chunks `{source: [N, D]}` (e.g. from an `ActivationSource` or a
    `PairedActivationSource`)."""
    S, D = len(sources), cc.cfg.d_in
    sse, sum_x2 = torch.zeros(S, dtype=torch.float64), torch.zeros(S, dtype=torch.float64)
    sum_SD = torch.zeros(S, D, dtype=torch.float64)
    fired_F = torch.zeros(cc.cfg.d_sae, dtype=torch.bool)
    active, tokens = 0, 0
    param = cc.W_enc
    for chunk in batches:
        x_NSD = torch.stack([chunk[s] for s in sources], 1)[: max_tokens - tokens]
        x_NSD = x_NSD.to(param.device, param.dtype)
        f_NF = cc.encode(x_NSD)
        x64_NSD = x_NSD.double()
        sse += (cc.decode(f_NF).double() - x64_NSD).pow(2).sum((0, 2)).cpu()
        sum_x2 += x64_NSD.pow(2).sum((0, 2)).cpu()
        sum_SD += x64_NSD.sum(0).cpu()
        fired_F |= (f_NF > 0).any(0).cpu()
        active += int((f_NF > 0).sum())
        tokens += x_NSD.shape[0]
        if tokens >= max_tokens:
            break
    if not tokens:
        raise ValueError("crosscoder evaluation got no tokens")
    sst = sum_x2 - sum_SD.pow(2).sum(-1) / tokens  # sum of squared deviations from the mean
    fvu_S = sse / sst.clamp_min(1e-30)
    return {
        "fvu_per_source": fvu_S.tolist(),
        "explained_variance": float(1 - fvu_S.mean()),
        "l0": active / tokens,
        "dead_fraction": float((~fired_F).float().mean()),
        "fired": fired_F,
        "tokens": tokens,
    }
