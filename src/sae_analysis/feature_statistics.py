"""Statistics of features' logit-weight distributions (`W_dec @ W_U`), as pandas tables."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor

from saekit.analysis.token_sets import moments


@torch.no_grad()
def get_stats_df(projection: Tensor) -> pd.DataFrame:
    """One row per feature: `feature, mean, std, skewness, kurtosis` of its row of `projection`."""
    stats = moments(projection.detach().cpu())
    return pd.DataFrame({"feature": range(projection.shape[0]),
                         **{k: v.numpy() for k, v in stats.items()}})  # fmt: skip


@torch.no_grad()
def get_W_U_W_dec_stats_df(
    W_dec: Tensor, model: Any, cosine_sim: bool = False
) -> tuple[pd.DataFrame, Tensor]:
    """`(stats table, W_dec @ W_U [d_sae, d_vocab])`; `cosine_sim` unit-normalises W_U's columns.

    The final norm before the unembedding is left out (see `saekit.analysis.logit_lens`).
    """
    W_U = model.W_U.detach().cpu().float()
    if cosine_sim:
        W_U = W_U / W_U.norm(dim=0, keepdim=True)
    projection = W_dec.detach().cpu().float() @ W_U
    return get_stats_df(projection), projection


@torch.no_grad()
def get_all_stats_dfs(
    sparse_autoencoders: dict[str, Any],
    sparsities: dict[str, Tensor],
    model: Any,
    cosine_sim: bool = False,
) -> pd.DataFrame:
    """The stats tables of several SAEs `{hook: sae}` with `log_feature_sparsity` and `layer`."""
    tables = []
    for key, sae in sparse_autoencoders.items():
        table, _ = get_W_U_W_dec_stats_df(sae.W_dec, model, cosine_sim)
        table["log_feature_sparsity"] = sparsities[key].detach().cpu().numpy()
        table["layer"] = int(key.split(".")[1]) + (1 if "post" in key else 0)
        tables.append(table)
    return pd.concat(tables, axis=0)


@torch.no_grad()
def get_feature_property_df(sparse_autoencoder: Any, feature_sparsity: Tensor) -> pd.DataFrame:
    """Per feature: log sparsity, encoder/decoder alignment, b_enc, b_dec's projection."""
    W_dec = sparse_autoencoder.W_dec.detach().cpu()
    W_enc = sparse_autoencoder.W_enc.detach().cpu()
    W_enc_unit = (W_enc / W_enc.norm(dim=0, keepdim=True)).T
    return pd.DataFrame({
        "log_feature_sparsity": (feature_sparsity + 1e-10).cpu().numpy(),
        "d_e_projection": (W_dec * W_enc_unit).sum(-1).numpy(),
        "b_enc": sparse_autoencoder.b_enc.detach().cpu().numpy(),
        "b_dec_projection": (sparse_autoencoder.b_dec.detach().cpu() @ W_dec.T).numpy(),
        "feature": list(range(W_dec.shape[0])),
        "dead_neuron": (feature_sparsity < -9).cpu().numpy(),
    })  # fmt: skip


__all__ = ["get_W_U_W_dec_stats_df", "get_all_stats_dfs", "get_feature_property_df", "get_stats_df"]
