"""Cross-layer transcoder (CLT): features read the MLP input of one layer and write to the
MLP outputs of that layer and of every later one (Ameisen et al. 2025, "Circuit Tracing").

Shapes: B batch, L layers, D input width, O output width (d_out), F features per layer.
Parameters: `W_enc [L, D, F]`, `b_enc [L, F]`, `W_dec_{l} [F, L - l, O]` (layer l's
features into the outputs of layers l, l+1, ..., L-1), `b_dec [L, O]` (+ `threshold [L, F]`
for batchtopk). Sparsity is per layer: each token keeps its k largest pre-activations of
every layer (`topk`), or each layer keeps the k * B largest of the batch (`batchtopk`, a
JumpReLU with the learned per-feature threshold at inference). The loss is the sum over
layers of the FVU of each MLP output, plus AuxK on dead features. Decoders are
unconstrained (a feature writes to several layers, so no unit norm applies).
A folder holds `cfg.json` (`architecture: "clt"`) and `sae_weights.safetensors`.
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

CLT_ACTIVATIONS = ("topk", "batchtopk")
CLT_ARCHITECTURE = "clt"


@dataclass
class CLTConfig(MultisiteConfig):
    """A CLT's `cfg.json`. `metadata.extra` lists `layers`, `hook_names`, `hook_names_out`."""

    LABEL: ClassVar[str] = "CLT"
    ARCHITECTURE: ClassVar[str] = CLT_ARCHITECTURE
    ACTIVATIONS: ClassVar[tuple[str, ...]] = CLT_ACTIVATIONS
    SIZES: ClassVar[tuple[str, ...]] = ("n_layers", "d_in", "d_sae", "d_out")

    n_layers: int
    d_in: int
    d_sae: int
    """Features per layer (the CLT has n_layers * d_sae)."""
    k: int
    """Active features per token and layer."""
    d_out: int | None = None
    activation: str = "topk"
    aux_k: int | None = None
    aux_coefficient: float = 1 / 32
    threshold_lr: float = 0.01
    dtype: str = "float32"
    device: str = "cpu"
    metadata: SAEMetadata = field(default_factory=SAEMetadata)

    def __post_init__(self) -> None:
        self.d_out = self.d_in if self.d_out is None else self.d_out
        self.check()


class CrossLayerTranscoder(nn.Module):
    """A cross-layer transcoder; `forward` returns the trainer's `SAEOutput` (flattened
    feature activations [B, L * F], reconstruction [B, L, O], loss parts)."""

    architecture: ClassVar[str] = CLT_ARCHITECTURE
    sparsity_setting: ClassVar[str] = "k"
    dead_feature_loss: ClassVar[str] = "auxk"
    resamplable: ClassVar[bool] = False
    approximate_selection: ClassVar[bool] = False
    sparsity_coefficient: ClassVar[float] = 0.0
    threshold: Tensor

    def __init__(self, cfg: CLTConfig):
        super().__init__()
        self.cfg = cfg
        L, D, F, DO = cfg.n_layers, cfg.d_in, cfg.d_sae, cfg.d_out
        kw: dict[str, Any] = {"dtype": DTYPES[cfg.dtype], "device": cfg.device}
        W_enc_LDF = torch.randn(L, D, F, **kw)
        self.W_enc = nn.Parameter(W_enc_LDF / W_enc_LDF.norm(dim=1, keepdim=True))
        self.b_enc = nn.Parameter(torch.zeros(L, F, **kw))
        decoders = []
        for layer in range(L):
            W_FJO = torch.randn(F, L - layer, DO, **kw)  # unit total norm per feature
            decoders.append(nn.Parameter(W_FJO / W_FJO.flatten(1).norm(dim=1)[:, None, None]))
        self.W_dec = nn.ParameterList(decoders)
        self.b_dec = nn.Parameter(torch.zeros(L, DO, **kw))
        if cfg.activation == "batchtopk":
            self.register_buffer("threshold", torch.zeros(L, F, **kw))

    @property
    def batch_dependent(self) -> bool:
        return self.cfg.activation == "batchtopk"

    # ---- the computation -----------------------------------------------------------------

    def pre_acts(self, x_BLD: Tensor) -> Tensor:
        """[B, L, F]: layer l's encoder applied to layer l's input."""
        return torch.einsum("bld,ldf->blf", x_BLD, self.W_enc) + self.b_enc

    def activate(self, pre_BLF: Tensor) -> Tensor:
        """Per-layer sparsity (see the module docstring)."""
        if self.cfg.activation == "topk":
            return topk_per_row(pre_BLF, self.cfg.k)
        if not self.training:
            return pre_BLF.relu() * (pre_BLF > self.threshold)
        f_BLF = torch.stack(
            [batch_topk(pre_BLF[:, i], self.cfg.k) for i in range(pre_BLF.shape[1])], 1
        )
        with torch.no_grad():  # move each layer's threshold towards its smallest kept value
            kept = torch.where(f_BLF > 0, f_BLF, torch.inf).amin(dim=(0, 2))
            lr = self.cfg.threshold_lr
            for i, value in enumerate(kept.tolist()):
                if value != float("inf"):
                    self.threshold[i].mul_(1 - lr).add_(lr * value)
        return f_BLF

    def encode(self, x_BLD: Tensor) -> Tensor:
        """Feature activations [B, L, F] from the MLP inputs [B, L, D]."""
        return self.activate(self.pre_acts(x_BLD))

    def decode(self, f_BLF: Tensor, bias: bool = True) -> Tensor:
        """MLP outputs [B, L, O]: output l' = b_dec[l'] + sum over l <= l' of f_l @ W_dec_l."""
        B, L, DO = f_BLF.shape[0], self.cfg.n_layers, self.cfg.d_out
        y_BLO = self.b_dec.expand(B, L, DO) if bias else f_BLF.new_zeros(B, L, DO)
        for layer, W_FJO in enumerate(self.W_dec):
            out_BJO = (f_BLF[:, layer] @ W_FJO.flatten(1)).view(B, L - layer, DO)
            y_BLO = y_BLO + nn.functional.pad(out_BJO, (0, 0, layer, 0))
        return y_BLO

    def layer_losses(self, target_BLO: Tensor, y_BLO: Tensor) -> Tensor:
        """[L]: the FVU of each layer's MLP output."""
        return torch.stack([fvu(target_BLO[:, i], y_BLO[:, i]) for i in range(y_BLO.shape[1])])

    def forward(
        self,
        x_BLD: Tensor,
        target_BLO: Tensor,
        *,
        dead_mask: Tensor | None = None,
        sparsity_coefficient: float | None = None,
        **_trainer_hints: Any,  # the single-hook sparse path's options (not used here)
    ) -> SAEOutput:
        """Encode, decode and the loss: the sum of per-layer FVUs (+ AuxK given `dead_mask`,
        bool [L * F], the trainer's flattened firing statistics)."""
        L, F = self.cfg.n_layers, self.cfg.d_sae
        if x_BLD.shape[1:] != (L, self.cfg.d_in) or target_BLO.shape[1:] != (L, self.cfg.d_out):
            raise ValueError(
                f"expected inputs [B, {L}, {self.cfg.d_in}] and targets [B, {L}, "
                f"{self.cfg.d_out}], got {tuple(x_BLD.shape)} and {tuple(target_BLO.shape)}"
            )
        pre_BLF = self.pre_acts(x_BLD)
        f_BLF = self.activate(pre_BLF)
        y_BLO = self.decode(f_BLF)
        mse = self.layer_losses(target_BLO, y_BLO).sum()
        aux = mse.new_zeros(())
        if dead_mask is not None and bool(dead_mask.any()):
            aux = self.aux_loss(
                pre_BLF, dead_mask.view(L, F).to(pre_BLF.device), target_BLO - y_BLO
            )
        return SAEOutput(y_BLO, f_BLF.flatten(1), mse + aux, mse, mse.new_zeros(()), aux)

    def aux_loss(self, pre_BLF: Tensor, dead_LF: Tensor, residual_BLO: Tensor) -> Tensor:
        """AuxK per layer: each layer's top `aux_k` dead features (default d_in // 2)
        reconstruct the detached residual; `aux_coefficient` times the summed FVUs."""
        k_aux = min(self.cfg.aux_k or max(self.cfg.d_in // 2, 1), int(dead_LF.sum(1).max()))
        with torch.no_grad():
            idx_BLK = torch.where(dead_LF, pre_BLF.relu(), 0.0).topk(k_aux, dim=-1).indices
        dead_BLK = dead_LF.expand(pre_BLF.shape[0], -1, -1).gather(-1, idx_BLK)
        vals_BLK = pre_BLF.gather(-1, idx_BLK).relu() * dead_BLK
        aux_BLF = torch.zeros_like(pre_BLF).scatter(-1, idx_BLK, vals_BLK)
        aux_out_BLO = self.decode(aux_BLF, bias=False)
        return (
            self.cfg.aux_coefficient * self.layer_losses(residual_BLO.detach(), aux_out_BLO).sum()
        )

    # ---- the trainer's hooks -------------------------------------------------------------

    def before_optimizer_step(self) -> None:
        """No decoder constraint."""

    def after_optimizer_step(self) -> None:
        """No decoder constraint."""

    @torch.no_grad()
    def fold_activation_scale(self, scale_in_L: Tensor, scale_out_L: Tensor) -> None:
        """Rewrite weights so a CLT trained on `x_l * scale_in[l]` (targets `* scale_out[l]`)
        works on raw activations; feature activations are unchanged."""
        scale_in_L = torch.as_tensor(scale_in_L, dtype=self.W_enc.dtype, device=self.W_enc.device)
        scale_out_L = torch.as_tensor(scale_out_L, dtype=self.W_enc.dtype, device=self.W_enc.device)
        self.W_enc *= scale_in_L[:, None, None]
        for layer, W_FJO in enumerate(self.W_dec):
            W_FJO /= scale_out_L[layer:][None, :, None]
        self.b_dec /= scale_out_L[:, None]

    # ---- files ---------------------------------------------------------------------------

    def state_dict_flat(self) -> dict[str, Tensor]:
        """Tensor name -> tensor as saved: W_enc, b_enc, W_dec_{l}, b_dec (+ threshold)."""
        out = {"W_enc": self.W_enc, "b_enc": self.b_enc, "b_dec": self.b_dec}
        out |= {f"W_dec_{layer}": W for layer, W in enumerate(self.W_dec)}
        if self.cfg.activation == "batchtopk":
            out["threshold"] = self.threshold
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    def save(self, folder: str | os.PathLike[str], sparsity: Tensor | None = None) -> None:
        """Write `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`, [L, F])."""
        if sparsity is not None:
            sparsity = sparsity.reshape(self.cfg.n_layers, -1)
        save_folder(folder, self.cfg, self.state_dict_flat(), sparsity)

    @staticmethod
    def load(folder: str | os.PathLike[str], device: str | None = None) -> CrossLayerTranscoder:
        """Load a CLT folder written by `save`, in eval mode."""
        cfg, tensors = read_folder(folder, CLTConfig, device)
        clt = CrossLayerTranscoder(cfg)
        clt.load_flat(tensors)
        return clt.eval()

    @torch.no_grad()
    def load_flat(self, tensors: dict[str, Tensor]) -> None:
        """Copy saved tensors in, checking every name and shape."""
        check_tensors("CLT", self.state_dict_flat(), tensors)
        self.W_enc.copy_(tensors["W_enc"])
        self.b_enc.copy_(tensors["b_enc"])
        self.b_dec.copy_(tensors["b_dec"])
        for layer, W in enumerate(self.W_dec):
            W.copy_(tensors[f"W_dec_{layer}"])
        if "threshold" in tensors:
            self.threshold.copy_(tensors["threshold"])


def load_clt(folder: str | os.PathLike[str], device: str | None = None) -> CrossLayerTranscoder:
    """Load a saekit CLT folder (see `CrossLayerTranscoder.save`)."""
    return CrossLayerTranscoder.load(folder, device)
