"""Training a cross-layer transcoder: its unit for the trainer, initialisation and the
memory estimate that decides, before any model pass, whether the run fits."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.dtypes import DTYPES
from saekit.saes.clt import CLTConfig, CrossLayerTranscoder
from saekit.training.config import DEFAULT_K, TrainConfig
from saekit.training.dead import FiringStats
from saekit.training.init import expected_norm_scale, geometric_median
from saekit.training.trainer import Batch, SAEUnit

CLT_NAME = "clt"  # the run's CLT folder and its name in metrics.jsonl


@dataclass
class CLTUnit(SAEUnit):
    """A CLT being trained: reads `hooks_in[l]`, reconstructs `hooks_out[l]`, with
    per-layer normalisation scales `scales_in_L` / `scales_out_L`."""

    hooks_in: tuple[str, ...] = ()
    hooks_out: tuple[str, ...] = ()
    scales_in_L: Tensor | None = None
    scales_out_L: Tensor | None = None
    gathered: CrossLayerTranscoder | None = None
    """Feature-sharded runs, on rank 0: the whole CLT as of the last `collect()`."""

    def inputs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        x_BLD = torch.stack([batch[h] for h in self.hooks_in], dim=1)
        y_BLO = torch.stack([batch[h] for h in self.hooks_out], dim=1)
        if self.scales_in_L is not None and self.scales_out_L is not None:
            x_BLD, y_BLO = x_BLD * self.scales_in_L[:, None], y_BLO * self.scales_out_L[:, None]
        return x_BLD, y_BLO

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "scales_in": self.scales_in_L,
            "scales_out": self.scales_out_L,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.scales_in_L, self.scales_out_L = state["scales_in"], state["scales_out"]

    def metadata_extra(self) -> dict:
        """What the saved folder records beyond the provenance: every layer's hooks."""
        return {"hook_names": list(self.hooks_in), "hook_names_out": list(self.hooks_out)}

    def raw_clt(self) -> CrossLayerTranscoder:
        """A copy working on raw activations (scales folded in), in eval mode."""
        import copy

        clt = copy.deepcopy(self.gathered if self.gathered is not None else self.sae).float()
        clt.cfg.dtype = "float32"  # bfloat16 training weights are saved and evaluated as float32
        if self.scales_in_L is not None and self.scales_out_L is not None:
            clt.fold_activation_scale(self.scales_in_L, self.scales_out_L)
        return clt.eval()


def clt_config(
    cfg: TrainConfig, pairs: list[tuple[str, str]], dims: dict[str, int], device
) -> CLTConfig:
    """The CLT a run trains over the layers of `pairs` (jumprelu: `l1` is its l0_coefficient,
    no k)."""
    d_in, d_out = dims[pairs[0][0]], dims[pairs[0][1]]
    sparsity: dict = {"k": cfg.ks[0] if cfg.ks else DEFAULT_K}
    if cfg.archs[0] in CLTConfig.PENALISED:
        sparsity = {"l0_coefficient": cfg.l1s[0]} if cfg.l1s else {}
    settings = dict(cfg.sae_settings)
    dtype = settings.pop("dtype", "float32")  # checked by TrainConfig
    return CLTConfig(
        n_layers=len(pairs), d_in=d_in, d_out=d_out,
        d_sae=cfg.d_saes[0] if cfg.d_saes else d_in * (cfg.expansion_factor or 8),
        activation=cfg.archs[0], dtype=dtype, device=str(device), **sparsity, **settings,
    )  # fmt: skip


def build_clt_unit(
    cfg: TrainConfig, pairs: list[tuple[str, str]], dims: dict[str, int], device
) -> CLTUnit:
    """A fresh CLT (training mode) over the layers of `pairs`, its Adam and firing stats."""
    from saekit.ranks import rank_and_world

    ccfg = clt_config(cfg, pairs, dims, device)
    rank, world = rank_and_world()
    sharded = cfg.sae_placement == "features" and world > 1
    check_memory(ccfg, cfg, device, world if sharded else 1)
    clt = CrossLayerTranscoder(ccfg).train()
    firing_width = ccfg.n_layers * ccfg.d_sae
    if sharded:  # every rank builds the same CLT (same seed) and keeps its slice
        from saekit.saes.clt_shard import ShardedCLT

        clt = ShardedCLT.from_full(clt, rank, world)
        firing_width //= world
    fused = torch.device(device).type in ("cpu", "cuda")
    optimizer = torch.optim.Adam(clt.parameters(), lr=cfg.lr, betas=cfg.adam_betas, fused=fused)
    use_dead = cfg.dead_feature_method in ("auto", "auxk") and clt.dead_feature_loss == "auxk"
    return CLTUnit(
        name=CLT_NAME, hook_in=pairs[0][0], hook_out=pairs[0][1], sae=clt, optimizer=optimizer,
        firing=FiringStats(firing_width, cfg.dead_after_tokens, device),
        use_dead_mask=use_dead, hooks_in=tuple(p[0] for p in pairs),
        hooks_out=tuple(p[1] for p in pairs),
    )  # fmt: skip


@torch.no_grad()
def initialize_clt(unit: CLTUnit, sample: Batch, normalize: str, b_dec_init: str) -> None:
    """Per-layer normalisation scales and decoder biases from a sample of activations
    (`normalize` and `b_dec_init` as the settings `normalize_activations` and `b_dec_init`)."""
    clt = unit.sae
    ins, outs = [sample[h] for h in unit.hooks_in], [sample[h] for h in unit.hooks_out]
    device = clt.b_dec.device
    if normalize == "expected_norm":
        unit.scales_in_L = torch.tensor([expected_norm_scale(x) for x in ins], device=device)
        unit.scales_out_L = torch.tensor([expected_norm_scale(y) for y in outs], device=device)
    else:
        unit.scales_in_L = unit.scales_out_L = torch.ones(len(ins), device=device)
    for layer, y_ND in enumerate(outs):
        y_ND = y_ND.to(device) * unit.scales_out_L[layer]
        if b_dec_init == "mean":
            clt.b_dec[layer] = y_ND.mean(dim=0)
        elif b_dec_init == "geometric_median":
            clt.b_dec[layer] = geometric_median(y_ND)


def memory_estimate(ccfg: CLTConfig, batch_tokens: int) -> dict[str, int]:
    """Bytes a CLT's training needs: weights, gradients, Adam state, per-batch activations."""
    L, D, DO, F = ccfg.n_layers, ccfg.d_in, ccfg.d_out, ccfg.d_sae
    n_params = L * D * F + L * F + F * DO * L * (L + 1) // 2 + L * DO
    width = DTYPES[ccfg.dtype].itemsize  # parameters, gradients and Adam state alike
    # pre-activations, activations, their gradients, AuxK's copy: ~5 [B, L, F] tensors in the
    # weights' dtype; inputs, targets, reconstruction and gradients: ~6 [B, L, D] in float32.
    acts = batch_tokens * L * (5 * F * width + 6 * max(D, DO) * 4)
    return {
        "parameters": n_params * width,
        "gradients": n_params * width,
        "optimizer": 2 * n_params * width,
        "activations": acts,
    }


def available_memory(device) -> int:
    """Bytes free for the run on `device` (SAEKIT_MEMORY_LIMIT overrides, for tests)."""
    if os.environ.get("SAEKIT_MEMORY_LIMIT"):
        return int(float(os.environ["SAEKIT_MEMORY_LIMIT"]))
    if torch.device(device).type == "cuda":
        return torch.cuda.mem_get_info(torch.device(device))[0]
    import psutil

    return psutil.virtual_memory().available


def check_memory(ccfg: CLTConfig, cfg: TrainConfig, device, shards: int = 1) -> None:
    """Print the estimate (per rank, for a CLT split over `shards` ranks by features);
    refuse a run that cannot fit, naming the settings to change."""
    parts = memory_estimate(ccfg, cfg.batch_tokens)
    parts = {k: v // shards for k, v in parts.items()}
    total, free = sum(parts.values()), available_memory(device)
    gib = 2**30
    line = ", ".join(f"{k} {v / gib:.2f}" for k, v in parts.items())
    print(
        f"CLT over {ccfg.n_layers} layers x {ccfg.d_sae} features: {total / gib:.2f} GiB "
        f"({line}); {free / gib:.2f} GiB free",
        file=sys.stderr,
    )
    if total > free:
        raise MemoryError(
            f"a CLT over {ccfg.n_layers} layers with d_sae={ccfg.d_sae} per layer needs about "
            f"{total / gib:.1f} GiB and {free / gib:.1f} GiB are free: lower d_sae "
            f"(--d-sae / --expansion-factor), the layer range (--transcoders A:B; decoders grow "
            f"with its square) or batch_tokens (activations: {parts['activations'] / gib:.1f} GiB)"
        )


def evaluate_replacement_units(units: list[SAEUnit], cfg: TrainConfig, eval_batches, raw) -> dict:
    """The replacement model of a run's CLT (named `clt`), or of its per-layer transcoders
    when `--transcoders` trains one per layer (named `replacement`); {} otherwise."""
    if eval_batches is None or not cfg.transcoders or len(units) < (1 if cfg.cross_layer else 2):
        return {}
    from saekit.evals.replacement import Replacement, evaluate_replacement

    if cfg.cross_layer:
        unit = units[0]
        assert isinstance(unit, CLTUnit)
        rep = Replacement.of_clt(raw(unit), list(unit.hooks_in), list(unit.hooks_out))
    elif len({u.hook_in for u in units}) == len(units):  # one transcoder per layer
        rep = Replacement.of_transcoders(
            [raw(u) for u in units], [u.hook_in for u in units], [u.hook_out for u in units]
        )
    else:
        return {}
    lm, batches = eval_batches()
    result = evaluate_replacement(rep, lm, batches, cfg.eval_tokens)
    fvus = result["fvu_per_layer"]
    result["explained_variance"] = 1 - sum(fvus) / len(fvus)
    result["l0"] = sum(result["l0_per_layer"])
    result["log10_feature_density"] = torch.zeros(0)  # the run's density plot covers units
    return {CLT_NAME if cfg.cross_layer else "replacement": result}
