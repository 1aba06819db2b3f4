"""Training a crosscoder: over several hooks of one model (`--crosscoder --hook A,B,...`) or
over one hook of two models with the same tokenizer (`--crosscoder --diff-model M`).

The unit is a `CLTUnit` whose inputs are also its targets, so the run's initialisation
(per-source normalisation scales, decoder biases), checkpoints and saving are the CLT's.
For model diffing, `PairedActivationSource` runs both models on the same token windows and
names the second model's activations `DIFF_PREFIX + hook`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saekit.data.activations import ActivationSource
from saekit.saes.crosscoder import Crosscoder, CrosscoderConfig
from saekit.training.clt import CLTUnit
from saekit.training.config import DEFAULT_K, TrainConfig
from saekit.training.dead import FiringStats
from saekit.training.trainer import Batch

CROSSCODER_NAME = "crosscoder"  # the run's crosscoder folder and its name in metrics.jsonl
DIFF_PREFIX = "finetuned:"  # the second model's activations in a diffing run's batches


@dataclass
class CrosscoderUnit(CLTUnit):
    """A crosscoder being trained: sources `hooks_in` (= `hooks_out`), per-source scales;
    `models` names the base and the other model of a diffing run."""

    models: tuple[str, ...] = ()

    def inputs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        x_BSD = torch.stack([batch[h] for h in self.hooks_in], dim=1)
        if self.scales_in_L is not None:
            x_BSD = x_BSD * self.scales_in_L[:, None]
        return x_BSD, x_BSD

    def metadata_extra(self) -> dict:
        """Its sources, the diffed models, and the scales of its training units (decoder
        norms compare in those units: `W_dec[:, s] * norm_scales[s]`)."""
        extra: dict = {"hook_names": list(self.hooks_in)}
        if self.models:
            extra["models"] = list(self.models)
        if self.scales_out_L is not None:
            extra["norm_scales"] = [float(v) for v in self.scales_out_L]
        return extra


def crosscoder_sources(cfg: TrainConfig, default_hook: str) -> list[str]:
    """The batch keys a crosscoder reads: its hooks, or one hook of both diffed models."""
    hooks = list(cfg.hooks or (default_hook,))
    if cfg.diff_model:
        return [hooks[0], DIFF_PREFIX + hooks[0]]
    return hooks


def build_crosscoder_unit(
    cfg: TrainConfig, sources: list[str], dims: dict[str, int], device
) -> CrosscoderUnit:
    """A fresh crosscoder (training mode) over `sources`, its Adam and firing statistics."""
    widths = {dims[s] for s in sources}
    if len(widths) != 1:
        raise ValueError(
            f"--crosscoder needs hooks of one width; got { ({s: dims[s] for s in sources}) }"
        )
    d_in = widths.pop()
    ccfg = CrosscoderConfig(
        n_sources=len(sources), d_in=d_in,
        d_sae=cfg.d_saes[0] if cfg.d_saes else d_in * (cfg.expansion_factor or 8),
        k=cfg.ks[0] if cfg.ks else DEFAULT_K, activation=cfg.archs[0], device=str(device),
        **dict(cfg.sae_settings),
    )  # fmt: skip
    model = Crosscoder(ccfg).train()
    fused = torch.device(device).type in ("cpu", "cuda")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, fused=fused)
    return CrosscoderUnit(
        name=CROSSCODER_NAME, hook_in=sources[0], hook_out=sources[0], sae=model,
        optimizer=optimizer, firing=FiringStats(ccfg.d_sae, cfg.dead_after_tokens, device),
        use_dead_mask=cfg.dead_feature_method in ("auto", "auxk"),
        hooks_in=tuple(sources), hooks_out=tuple(sources),
        models=(cfg.model, cfg.diff_model) if cfg.diff_model else (),
    )  # fmt: skip


class PairedActivationSource(ActivationSource):
    """Activations at `hooks` of `lm` and (named `DIFF_PREFIX + hook`) of `lm_b`, from the
    same token windows and kept positions, one forward of each model per item."""

    def __init__(self, lm: Any, lm_b: Any, hooks: list[str], windows, rows_per_forward: int = 32):
        super().__init__(lm, hooks, windows, rows_per_forward)
        self.lm_b = lm_b
        self.model_hooks = list(self.hooks)
        for h in self.model_hooks:
            width_b = int(lm_b.hook_dim(h))
            if width_b != self.dims[h]:
                raise ValueError(
                    f"--diff-model: hook {h!r} is {self.dims[h]} wide in the base model and "
                    f"{width_b} in the other; model diffing needs models of one shape"
                )
        # what each item holds (torchrun's RankStridedSource gathers these keys)
        self.hooks = self.model_hooks + [DIFF_PREFIX + h for h in self.model_hooks]
        self.dims |= {DIFF_PREFIX + h: self.dims[h] for h in self.model_hooks}

    def __next__(self) -> dict[str, Tensor]:
        if self._batches is None:
            from saekit.data.tokens import iter_token_batches

            self._batches = iter_token_batches(self.windows, self.rows_per_forward)
        input_ids_BT, keep_BT = next(self._batches)
        ids_BT = input_ids_BT.to(self.device)
        keep_BT = keep_BT.to(self.device)
        hooks = self.model_hooks
        with torch.no_grad():
            acts = self.lm.run_to_hooks(ids_BT, hooks)
            acts_b = self.lm_b.run_to_hooks(ids_BT, hooks)
        out = {h: acts[h][keep_BT].float() for h in hooks}
        return out | {DIFF_PREFIX + h: acts_b[h][keep_BT].to(self.device).float() for h in hooks}


def open_diff_data(
    cfg: TrainConfig, device: Any
) -> tuple[Any, Any, list[tuple[str, str]], dict[str, int], Any]:
    """`open_data` for a model-diffing crosscoder: both models, the paired shuffle buffer."""
    from saekit.data import ShuffleBuffer
    from saekit.data.activations import LimitedSource
    from saekit.data.provenance import Provenance, default_hook, token_windows
    from saekit.dtypes import DTYPES
    from saekit.models import load_model

    lm = load_model(cfg.model, device=device, dtype=DTYPES[cfg.dtype])
    lm_b = load_model(cfg.diff_model, device=device, dtype=DTYPES[cfg.dtype])
    if lm.tokenizer.get_vocab() != lm_b.tokenizer.get_vocab():
        raise ValueError(
            f"--diff-model {cfg.diff_model!r} has another tokenizer than --model {cfg.model!r}; "
            "model diffing needs one tokenizer"
        )
    sources = crosscoder_sources(cfg, default_hook(lm.n_layers))
    prov = Provenance.of(cfg).replace(hooks=(sources[0],))
    part = "train" if prov.holdout_every else "all"
    windows = token_windows(prov, lm.tokenizer, part, repeat=True, expected_tokens=cfg.tokens)
    source = PairedActivationSource(lm, lm_b, [sources[0]], windows, cfg.forward_rows)
    dims = {s: source.dims[sources[0]] for s in sources}
    from saekit.data.strided import strided_source

    limited = LimitedSource(strided_source(source, device), cfg.tokens)
    buffer = ShuffleBuffer(limited, cfg.buffer_tokens, cfg.batch_tokens, cfg.seed)
    return lm, buffer, [(s, s) for s in sources], dims, prov
