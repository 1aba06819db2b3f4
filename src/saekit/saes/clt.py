"""Cross-layer transcoder (CLT): features read the MLP input of one layer and write to the
MLP outputs of that layer and of every later one (Ameisen et al. 2025, "Circuit Tracing").

Shapes: B batch, L layers, D input width, O output width (d_out), F features per layer.
Parameters: `W_enc [L, D, F]`, `b_enc [L, F]`, `W_dec_{l} [F, L - l, O]` (layer l's
features into the outputs of layers l, l+1, ..., L-1), `b_dec [L, O]` (+ `threshold [L, F]`
for batchtopk and jumprelu). Sparsity is per layer: each token keeps its k largest
pre-activations of every layer (`topk`), or each layer keeps the k * B largest of the batch
(`batchtopk`, a JumpReLU with the learned per-feature threshold at inference), or a JumpReLU
with a learned per-feature threshold trained through straight-through estimators (`jumprelu`,
`saekit.saes.jumprelu`). The loss is the sum over layers of the FVU of each MLP output, plus
AuxK on dead features (topk, batchtopk) or, for jumprelu, the tanh penalty
`l0_coefficient * sum_f tanh(tanh_scale * ||W_dec_f|| * a_f)` averaged over tokens, where
||W_dec_f|| is the norm of the feature's decoder vectors to every layer it writes
concatenated (+ `pre_act_coefficient * sum_f relu(-pre_f) * ||W_dec_f||` against dead
features). Decoders are unconstrained (a feature writes to several layers, so no unit norm
applies). A folder holds `cfg.json` (`architecture: "clt"`) and `sae_weights.safetensors`.
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
from saekit.saes.config import ARCH_SETTINGS, SAEMetadata
from saekit.saes.jumprelu import JumpReLUFn, pre_act_penalty, tanh_penalty
from saekit.saes.multisite import (
    AUXK_SETTINGS,
    MultisiteConfig,
    check_tensors,
    read_folder,
    save_folder,
)
from saekit.saes.topk import topk_per_row

CLT_ACTIVATIONS = ("topk", "batchtopk", "jumprelu")
CLT_TRAINING_DTYPES = ("float32", "bfloat16")
"""What a CLT's weights may be kept in while training (`--sae-setting dtype=...`)."""
CLT_ARCHITECTURE = "clt"
JUMPRELU_SETTINGS = ("bandwidth", "init_threshold", "tanh_scale", "pre_act_coefficient")
"""What a run may set for a jumprelu CLT (`--sae-setting`; l0_coefficient comes from --l1)."""
# The single-hook JumpReLU SAE's defaults (its tanh mode: saes/config.py ARCH_SETTINGS), one
# table for both; the pre-activation loss is off unless asked for.
_SHARED = ("l0_coefficient", "tanh_scale", "bandwidth", "init_threshold")
JUMPRELU_DEFAULTS: dict[str, float] = {
    **{name: ARCH_SETTINGS["jumprelu"][name] for name in _SHARED},
    "pre_act_coefficient": 0.0,
}


def smallest_kept(f_BLF: Tensor) -> Tensor:
    """[L]: each layer's smallest positive activation in the batch (inf where none)."""
    with torch.no_grad():
        return torch.where(f_BLF > 0, f_BLF, torch.inf).amin(dim=(0, 2))


def wide(t: Tensor) -> Tensor:
    """`t` in float32 when it is narrower (bfloat16 weights), else as it is (float64 stays)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


@dataclass
class CLTConfig(MultisiteConfig):
    """A CLT's `cfg.json`. `metadata.extra` lists `layers`, `hook_names`, `hook_names_out`."""

    LABEL: ClassVar[str] = "CLT"
    ARCHITECTURE: ClassVar[str] = CLT_ARCHITECTURE
    ACTIVATIONS: ClassVar[tuple[str, ...]] = CLT_ACTIVATIONS
    SIZES: ClassVar[tuple[str, ...]] = ("n_layers", "d_in", "d_sae", "d_out")
    PENALISED: ClassVar[tuple[str, ...]] = ("jumprelu",)
    SETTINGS: ClassVar[dict[str, tuple[str, ...]]] = {
        "topk": (*AUXK_SETTINGS, "dtype"),
        "batchtopk": (*AUXK_SETTINGS, "dtype"),
        "jumprelu": (*JUMPRELU_SETTINGS, "dtype"),
    }

    n_layers: int
    d_in: int
    d_sae: int
    """Features per layer (the CLT has n_layers * d_sae)."""
    k: int | None = None
    """topk, batchtopk: active features per token and layer (jumprelu: None)."""
    d_out: int | None = None
    activation: str = "topk"
    """topk, batchtopk or jumprelu (see the module docstring)."""
    aux_k: int | None = None
    aux_coefficient: float = 1 / 32
    threshold_lr: float = 0.01
    l0_coefficient: float | None = None
    """jumprelu: the tanh penalty's coefficient (default 1e-3, as the JumpReLU SAE's)."""
    tanh_scale: float | None = None
    """jumprelu: c in tanh(c * ||W_dec_f|| * a_f) (default 4.0, as the JumpReLU SAE's)."""
    bandwidth: float | None = None
    """jumprelu: width of the straight-through estimator's rectangle kernel (default 0.05)."""
    init_threshold: float | None = None
    """jumprelu: every feature's threshold at initialisation (default 0.01)."""
    pre_act_coefficient: float | None = None
    """jumprelu: coefficient of the pre-activation loss against dead features (default 0:
    off)."""
    dtype: str = "float32"
    """The weights' dtype. Training may keep them in bfloat16 (`--sae-setting dtype=bfloat16`:
    weights, gradients and Adam state at half the memory; thresholds, losses and penalties in
    float32); the saved CLT is float32 either way."""
    device: str = "cpu"
    metadata: SAEMetadata = field(default_factory=SAEMetadata)

    def __post_init__(self) -> None:
        self.d_out = self.d_in if self.d_out is None else self.d_out
        self.check()
        given = [name for name in JUMPRELU_DEFAULTS if getattr(self, name) is not None]
        if self.activation != "jumprelu":
            if given:
                raise ValueError(
                    f"CLT {given[0]} is a setting of activation jumprelu; activation="
                    f"{self.activation!r} takes k, {', '.join(AUXK_SETTINGS)}"
                )
            return
        for name, default in JUMPRELU_DEFAULTS.items():
            value = default if getattr(self, name) is None else getattr(self, name)
            setattr(self, name, value)
            positive = name in ("tanh_scale", "bandwidth")
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not (value > 0 if positive else value >= 0):
                raise ValueError(f"CLT {name} must be {'>' if positive else '>='} 0, got {value!r}")


class CrossLayerTranscoder(nn.Module):
    """A cross-layer transcoder; `forward` returns the trainer's `SAEOutput` (flattened
    feature activations [B, L * F], reconstruction [B, L, O], loss parts)."""

    architecture: ClassVar[str] = CLT_ARCHITECTURE
    resamplable: ClassVar[bool] = False
    approximate_selection: ClassVar[bool] = False
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
        # thresholds stay float32 (at least) with bfloat16 weights: small updates would round away
        t_kw = {**kw, "dtype": torch.promote_types(kw["dtype"], torch.float32)}
        if cfg.activation == "batchtopk":
            self.register_buffer("threshold", torch.zeros(L, F, **t_kw))
        elif cfg.activation == "jumprelu":
            self.threshold = nn.Parameter(torch.full((L, F), float(cfg.init_threshold), **t_kw))

    @property
    def batch_dependent(self) -> bool:
        return self.cfg.activation == "batchtopk"

    @property
    def penalised(self) -> bool:
        """Whether a penalty sets the sparsity (jumprelu) rather than k."""
        return self.cfg.activation in CLTConfig.PENALISED

    @property
    def sparsity_setting(self) -> str:
        """The trainer's sparsity setting: "k", or "l0_coefficient" for jumprelu."""
        return "l0_coefficient" if self.penalised else "k"

    @property
    def sparsity_coefficient(self) -> float:
        """The tanh penalty's configured coefficient (0 for topk, batchtopk)."""
        return float(self.cfg.l0_coefficient) if self.penalised else 0.0

    @property
    def dead_feature_loss(self) -> str | None:
        """What `dead_mask` switches on: AuxK (topk, batchtopk) or nothing (jumprelu)."""
        return None if self.penalised else "auxk"

    # ---- the computation -----------------------------------------------------------------

    def pre_acts(self, x_BLD: Tensor) -> Tensor:
        """[B, L, F]: layer l's encoder applied to layer l's input."""
        return torch.einsum("bld,ldf->blf", x_BLD.to(self.W_enc.dtype), self.W_enc) + self.b_enc

    def activate(self, pre_BLF: Tensor) -> Tensor:
        """Per-layer sparsity (see the module docstring)."""
        if self.cfg.activation == "topk":
            return topk_per_row(pre_BLF, self.cfg.k)
        if self.cfg.activation == "jumprelu":  # relu(pre) * (pre > t), straight-through grads
            return JumpReLUFn.apply(pre_BLF, self.threshold, self.cfg.bandwidth)
        if not self.training:
            return pre_BLF.relu() * (pre_BLF > self.threshold)
        f_BLF = torch.stack(
            [batch_topk(pre_BLF[:, i], self.cfg.k) for i in range(pre_BLF.shape[1])], 1
        )
        self.move_thresholds(smallest_kept(f_BLF))
        return f_BLF

    @torch.no_grad()
    def move_thresholds(self, kept_L: Tensor) -> None:
        """batchtopk: move each layer's threshold towards its smallest kept value (`kept_L`;
        inf where the layer kept nothing) by `threshold_lr`."""
        lr = self.cfg.threshold_lr
        for i, value in enumerate(kept_L.tolist()):
            if value != float("inf"):
                self.threshold[i].mul_(1 - lr).add_(lr * value)

    def encode(self, x_BLD: Tensor) -> Tensor:
        """Feature activations [B, L, F] from the MLP inputs [B, L, D]."""
        return self.activate(self.pre_acts(x_BLD))

    def encode_layer(self, layer: int, x_ND: Tensor) -> Tensor:
        """Layer `layer`'s feature activations [N, F] at inference from its MLP input [N, D]
        (with that layer's thresholds; batchtopk as its JumpReLU)."""
        pre_NF = x_ND.to(self.W_enc.dtype) @ self.W_enc[layer] + self.b_enc[layer]
        if self.cfg.activation == "topk":
            return topk_per_row(pre_NF, self.cfg.k)
        return pre_NF.relu() * (pre_NF > self.threshold[layer])

    def decoder_norms(self) -> Tensor:
        """[L, F]: the norm of each feature's decoder vectors to all the layers it writes,
        concatenated."""
        return torch.stack([W_FJO.flatten(1).norm(dim=1) for W_FJO in self.W_dec])

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
        t_BLO, y_BLO = wide(target_BLO), wide(y_BLO)  # bfloat16 weights: losses in float32
        return torch.stack([fvu(t_BLO[:, i], y_BLO[:, i]) for i in range(y_BLO.shape[1])])

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
        bool [L * F], the trainer's flattened firing statistics; + for jumprelu the penalties
        in `sparsity_loss`, `sparsity_coefficient` overriding l0_coefficient for warm-up)."""
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
        aux = sparsity = mse.new_zeros(())
        if self.penalised:
            sparsity = self.sparsity_loss(pre_BLF, f_BLF, sparsity_coefficient)
        elif dead_mask is not None and bool(dead_mask.any()):
            aux = self.aux_loss(
                pre_BLF, dead_mask.view(L, F).to(pre_BLF.device), target_BLO - y_BLO
            )
        return SAEOutput(y_BLO, f_BLF.flatten(1), mse + sparsity + aux, mse, sparsity, aux)

    def sparsity_loss(self, pre_BLF: Tensor, f_BLF: Tensor, coefficient: float | None) -> Tensor:
        """jumprelu: `coefficient` (default l0_coefficient) times the tanh penalty, plus
        pre_act_coefficient times the pre-activation loss (a batch mean, like the penalty:
        neither is an FVU)."""
        coefficient = self.sparsity_coefficient if coefficient is None else coefficient
        norms_LF = wide(self.decoder_norms())  # sums over features in float32 at least
        loss = coefficient * tanh_penalty(wide(f_BLF), norms_LF, float(self.cfg.tanh_scale))
        if self.cfg.pre_act_coefficient:
            loss = loss + self.cfg.pre_act_coefficient * pre_act_penalty(wide(pre_BLF), norms_LF)
        return loss

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

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """No decoder constraint; jumprelu thresholds are clamped at >= 0."""
        if self.penalised:
            self.threshold.clamp_(min=0.0)

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
        if self.cfg.activation != "topk":
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
