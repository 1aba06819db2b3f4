"""Crosscoders: one latent space read from and written to several activation sources
(Lindsey et al. 2024, "Sparse Crosscoders").

A source is a hook of one model (an acausal crosscoder over several layers) or the same hook
of two models with one tokenizer (a model-diffing crosscoder: source 0 the base model,
source 1 the fine-tuned one). Every source has the same width D.

Shapes: B batch, S sources, D width, F features. Parameters: `W_enc [S, D, F]`, `b_enc [F]`,
`W_dec [F, S, D]`, `b_dec [S, D]` (+ `threshold [F]` for batchtopk). The pre-activation sums
every source's encoder, `pre = b_enc + sum_s x_s @ W_enc[s]`; sparsity keeps each token's k
largest (`topk`) or the batch's k * B largest (`batchtopk`, a JumpReLU with the learned
threshold at inference); each source is reconstructed as `b_dec[s] + f @ W_dec[:, s]`. The
loss is the sum over sources of each source's FVU, plus AuxK on dead features. A folder holds
`cfg.json` (`architecture: "crosscoder"`) and `sae_weights.safetensors`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from saekit.dtypes import DTYPES
from saekit.evals.metrics import fvu
from saekit.saes.base import SAEOutput
from saekit.saes.batchtopk import batch_topk
from saekit.saes.config import SAEMetadata
from saekit.saes.multisite import MultisiteConfig, check_tensors, read_folder, save_folder
from saekit.saes.topk import topk_per_row

CROSSCODER_ARCHITECTURE = "crosscoder"
CROSSCODER_ACTIVATIONS = ("topk", "batchtopk")


@dataclass
class CrosscoderConfig(MultisiteConfig):
    """A crosscoder's `cfg.json`. `metadata.extra["hook_names"]` names the sources (a diffing
    crosscoder also records `models`: base and fine-tuned)."""

    LABEL: ClassVar[str] = "crosscoder"
    ARCHITECTURE: ClassVar[str] = CROSSCODER_ARCHITECTURE
    ACTIVATIONS: ClassVar[tuple[str, ...]] = CROSSCODER_ACTIVATIONS
    SIZES: ClassVar[tuple[str, ...]] = ("n_sources", "d_in", "d_sae")

    n_sources: int
    d_in: int
    d_sae: int
    k: int
    """Active features per token (one latent space: k in total, not per source)."""
    activation: str = "topk"
    aux_k: int | None = None
    aux_coefficient: float = 1 / 32
    threshold_lr: float = 0.01
    dtype: str = "float32"
    device: str = "cpu"
    metadata: SAEMetadata = field(default_factory=SAEMetadata)

    def __post_init__(self) -> None:
        self.check()


class Crosscoder(nn.Module):
    """A crosscoder; `forward` returns the trainer's `SAEOutput` (feature activations
    [B, F], reconstruction [B, S, D], loss parts)."""

    architecture: ClassVar[str] = CROSSCODER_ARCHITECTURE
    sparsity_setting: ClassVar[str] = "k"
    dead_feature_loss: ClassVar[str] = "auxk"
    resamplable: ClassVar[bool] = False
    approximate_selection: ClassVar[bool] = False
    sparsity_coefficient: ClassVar[float] = 0.0
    threshold: Tensor

    def __init__(self, cfg: CrosscoderConfig):
        super().__init__()
        self.cfg = cfg
        S, D, F = cfg.n_sources, cfg.d_in, cfg.d_sae
        kw: dict[str, Any] = {"dtype": DTYPES[cfg.dtype], "device": cfg.device}
        W_dec_FSD = torch.randn(F, S, D, **kw)
        W_dec_FSD /= W_dec_FSD.flatten(1).norm(dim=1)[:, None, None]  # unit total norm
        self.W_dec = nn.Parameter(W_dec_FSD)
        self.W_enc = nn.Parameter(W_dec_FSD.permute(1, 2, 0).clone())  # the decoder's transpose
        self.b_enc = nn.Parameter(torch.zeros(F, **kw))
        self.b_dec = nn.Parameter(torch.zeros(S, D, **kw))
        if cfg.activation == "batchtopk":
            self.register_buffer("threshold", torch.zeros(F, **kw))

    @property
    def batch_dependent(self) -> bool:
        return self.cfg.activation == "batchtopk"

    def pre_acts(self, x_BSD: Tensor) -> Tensor:
        """[B, F]: the sum of every source's encoder, plus the bias."""
        return torch.einsum("bsd,sdf->bf", x_BSD, self.W_enc) + self.b_enc

    def activate(self, pre_BF: Tensor) -> Tensor:
        """TopK per token, or BatchTopK (training) / its JumpReLU threshold (inference)."""
        if self.cfg.activation == "topk":
            return topk_per_row(pre_BF, self.cfg.k)
        if not self.training:
            return pre_BF.relu() * (pre_BF > self.threshold)
        f_BF = batch_topk(pre_BF, self.cfg.k)
        with torch.no_grad():  # move the threshold towards the smallest kept value
            kept = torch.where(f_BF > 0, f_BF, torch.inf).min()
            if torch.isfinite(kept):
                lr = self.cfg.threshold_lr
                self.threshold.mul_(1 - lr).add_(lr * kept)
        return f_BF

    def encode(self, x_BSD: Tensor) -> Tensor:
        """Feature activations [B, F] from every source's activations [B, S, D]."""
        return self.activate(self.pre_acts(x_BSD))

    def decode(self, f_BF: Tensor, bias: bool = True) -> Tensor:
        """Every source's reconstruction [B, S, D]."""
        y_BSD = (f_BF @ self.W_dec.flatten(1)).view(-1, self.cfg.n_sources, self.cfg.d_in)
        return y_BSD + self.b_dec if bias else y_BSD

    def source_losses(self, target_BSD: Tensor, y_BSD: Tensor) -> Tensor:
        """[S]: the FVU of each source."""
        return torch.stack([fvu(target_BSD[:, s], y_BSD[:, s]) for s in range(y_BSD.shape[1])])

    def forward(
        self,
        x_BSD: Tensor,
        target_BSD: Tensor | None = None,
        *,
        dead_mask: Tensor | None = None,
        sparsity_coefficient: float | None = None,
        **_trainer_hints: Any,  # the single-hook sparse path's options (not used here)
    ) -> SAEOutput:
        """Encode, decode and the loss: the sum of per-source FVUs (+ AuxK given `dead_mask`,
        bool [F]). The target is the input itself unless given."""
        target_BSD = x_BSD if target_BSD is None else target_BSD
        shape = (self.cfg.n_sources, self.cfg.d_in)
        if x_BSD.shape[1:] != shape or target_BSD.shape[1:] != shape:
            raise ValueError(
                f"expected inputs and targets [B, {shape[0]}, {shape[1]}], got "
                f"{tuple(x_BSD.shape)} and {tuple(target_BSD.shape)}"
            )
        pre_BF = self.pre_acts(x_BSD)
        f_BF = self.activate(pre_BF)
        y_BSD = self.decode(f_BF)
        mse = self.source_losses(target_BSD, y_BSD).sum()
        aux = mse.new_zeros(())
        if dead_mask is not None and bool(dead_mask.any()):
            aux = self.aux_loss(pre_BF, dead_mask.to(pre_BF.device), target_BSD - y_BSD)
        return SAEOutput(y_BSD, f_BF, mse + aux, mse, mse.new_zeros(()), aux)

    def aux_loss(self, pre_BF: Tensor, dead_F: Tensor, residual_BSD: Tensor) -> Tensor:
        """AuxK: the top `aux_k` dead features (default d_in // 2) reconstruct the detached
        residual of every source; `aux_coefficient` times the summed FVUs."""
        k_aux = min(self.cfg.aux_k or max(self.cfg.d_in // 2, 1), int(dead_F.sum()))
        masked_BF = torch.where(dead_F, pre_BF.relu(), 0.0)
        vals_BK, idx_BK = masked_BF.topk(k_aux, dim=-1)
        aux_BF = torch.zeros_like(pre_BF).scatter(
            -1, idx_BK, pre_BF.gather(-1, idx_BK).relu() * (vals_BK > 0)
        )
        aux_out_BSD = self.decode(aux_BF, bias=False)
        return (
            self.cfg.aux_coefficient * self.source_losses(residual_BSD.detach(), aux_out_BSD).sum()
        )

    def before_optimizer_step(self) -> None:
        """No decoder constraint (the per-source norms carry the diffing signal)."""

    def after_optimizer_step(self) -> None:
        """No decoder constraint."""

    @torch.no_grad()
    def fold_activation_scale(self, scale_in_S: Tensor, scale_out_S: Tensor) -> None:
        """Rewrite weights so a crosscoder trained on `x_s * scale_in[s]` (targets
        `* scale_out[s]`) works on raw activations; feature activations are unchanged."""
        scale_in_S = torch.as_tensor(scale_in_S, dtype=self.W_enc.dtype, device=self.W_enc.device)
        scale_out_S = torch.as_tensor(scale_out_S, dtype=self.W_enc.dtype, device=self.W_enc.device)
        self.W_enc *= scale_in_S[:, None, None]
        self.W_dec /= scale_out_S[None, :, None]
        self.b_dec /= scale_out_S[:, None]

    # ---- files ---------------------------------------------------------------------------

    def state_dict_flat(self) -> dict[str, Tensor]:
        """Tensor name -> tensor as saved: W_enc, b_enc, W_dec, b_dec (+ threshold)."""
        out = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.cfg.activation == "batchtopk":
            out["threshold"] = self.threshold
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    def save(self, folder: str | os.PathLike[str], sparsity: Tensor | None = None) -> None:
        """Write `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`, [F])."""
        save_folder(folder, self.cfg, self.state_dict_flat(), None if sparsity is None else sparsity.flatten())

    @staticmethod
    def load(folder: str | os.PathLike[str], device: str | None = None) -> Crosscoder:
        """Load a folder written by `save`, in eval mode."""
        cfg, tensors = read_folder(folder, CrosscoderConfig, device)
        model = Crosscoder(cfg)
        check_tensors("crosscoder", model.state_dict_flat(), tensors)
        with torch.no_grad():
            for name, value in tensors.items():
                getattr(model, name).copy_(value)
        return model.eval()


def relative_decoder_norms(W_dec_FSD: Tensor, a: int = 0, b: int = 1) -> Tensor:
    """[F]: `|d_b| / (|d_a| + |d_b|)` per feature, from 0 (only source a) through 0.5 (equal)
    to 1 (only source b); NaN where both decoders are zero."""
    norm_a, norm_b = W_dec_FSD[:, a].norm(dim=-1), W_dec_FSD[:, b].norm(dim=-1)
    return norm_b / (norm_a + norm_b)
