"""The SAE base class: one `nn.Module` per architecture, for training and inference.

Shapes: B batch, D input width (d_in), O output width (d_out, = D unless transcoder),
F dictionary size (d_sae).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from saekit.dtypes import DTYPES
from saekit.evals.metrics import fvu
from saekit.saes.config import SAEConfig, SAEMetadata
from saekit.saes.pairs import Acts, DenseActs, PairActs, SparseCode, code_from_topk


class SAEOutput(NamedTuple):
    """What `SAE.forward` returns. Loss parts are scalars and `loss` is their sum."""

    sae_out: Tensor
    """Reconstruction of the target, [B, O]."""
    feature_acts: Tensor
    """Feature activations, [B, F]."""
    loss: Tensor
    """mse_loss + sparsity_loss + aux_loss: the quantity to minimise."""
    mse_loss: Tensor
    """Fraction of variance unexplained, `evals.metrics.fvu(target, sae_out)`: the squared
    error over the batch's total variance of the target (matryoshka: summed over prefixes)."""
    sparsity_loss: Tensor
    """Coefficient times the penalty (L1 for relu/gated, L0 for jumprelu; 0 for k-sparse)."""
    aux_loss: Tensor
    """AuxK (topk, batchtopk, matryoshka) or ghost grads (relu) when `dead_mask` is given;
    gated's frozen-decoder reconstruction loss; otherwise 0."""


class SAE(nn.Module):
    """Sparse autoencoder. Create with `SAE.create(arch, ...)`, load with `SAE.load(folder)`.

    Both return the SAE in eval mode, ready for inference; call `.train()` to train it
    (batchtopk and matryoshka then use batch statistics, as BatchNorm does). Every other
    output is the same in either mode, and exact: only a caller that passes
    `approx_selection=True` to `forward` gets an approximate choice of active features.

    Parameters: `W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_out]`,
    `b_dec [d_out]` (+ `threshold [d_sae]` for jumprelu/batchtopk/matryoshka; gated has
    `b_gate, b_mag, r_mag` instead of `b_enc`). `state_dict()` keys are the tensor names of
    `sae_weights.safetensors`.
    """

    # Per-architecture facts: every table of architectures (the trainer's sweeps, its
    # dead-feature methods, data-parallel placement) is derived from these.
    architecture: ClassVar[str] = ""
    sparsity_setting: ClassVar[str] = ""
    """The setting that trades sparsity for reconstruction, which a sweep varies: "k" (the
    k-sparse family), or the penalty's coefficient ("l1_coefficient", "l0_coefficient")."""
    dead_feature_loss: ClassVar[str | None] = None
    """What `dead_mask` switches on: "auxk", "ghost_grads" or None (no such loss)."""
    default_dead_feature_method: ClassVar[str] = "none"
    """The trainer's dead-feature method when it is left on auto."""
    resamplable: ClassVar[bool] = False
    """Whether the trainer may resample dead features (Anthropic's method for ReLU SAEs)."""
    batch_dependent: ClassVar[bool] = False
    """Whether a token's training activations depend on the rest of the batch (batch
    top-k), so that data-parallel ranks cannot compute them from slices of the batch."""
    approximate_selection: ClassVar[bool] = False
    """Whether the sparse path may choose the active pairs from a bfloat16 encoder product
    when the caller asks (`approx_selection=True`): only near-ties can then differ."""

    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if cfg.architecture != self.architecture:
            raise ValueError(f"{type(self).__name__} cannot take architecture {cfg.architecture!r}")
        self.cfg = cfg
        kw: dict[str, Any] = {"dtype": DTYPES[cfg.dtype], "device": cfg.device}
        W_dec_FO = torch.randn(cfg.d_sae, cfg.d_out, **kw)
        W_dec_FO /= W_dec_FO.norm(dim=1, keepdim=True)
        if cfg.d_out == cfg.d_in:
            W_enc_DF = W_dec_FO.T.clone()
        else:
            W_enc_DF = torch.randn(cfg.d_in, cfg.d_sae, **kw)
            W_enc_DF /= W_enc_DF.norm(dim=0, keepdim=True)
        self.W_enc = nn.Parameter(W_enc_DF.contiguous())
        self.W_dec = nn.Parameter(W_dec_FO)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out, **kw))
        self.init_extra(kw)

    # ---- construction and files -------------------------------------------------------

    @staticmethod
    def create(
        arch: str,
        *,
        d_in: int,
        d_sae: int,
        d_out: int | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        metadata: SAEMetadata | dict[str, Any] | None = None,
        apply_b_dec_to_input: bool | None = None,
        **settings: Any,
    ) -> SAE:
        """A freshly initialised SAE of architecture `arch` (e.g. `k=32` for topk), in eval
        mode."""
        from saekit.saes.registry import get_sae_class

        get_sae_class(arch)  # an unknown name: the registry's error, listing the known ones
        cfg = SAEConfig(
            architecture=arch, d_in=d_in, d_sae=d_sae, d_out=d_out, dtype=dtype,
            device=str(device), apply_b_dec_to_input=apply_b_dec_to_input,
            metadata=SAEMetadata() if metadata is None else metadata, **settings,
        )  # fmt: skip
        return SAE.from_config(cfg)

    @staticmethod
    def from_config(cfg: SAEConfig) -> SAE:
        """A freshly initialised SAE for an existing config, in eval mode."""
        from saekit.saes.registry import get_sae_class

        return get_sae_class(cfg.architecture)(cfg).eval()

    def save(self, folder: str | os.PathLike[str], sparsity: Tensor | None = None) -> None:
        """Write `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`)."""
        from saekit.saes.folder import save_sae_folder

        save_sae_folder(self, folder, sparsity=sparsity)

    @staticmethod
    def load(
        folder: str | os.PathLike[str], device: str | None = None, *, check_weights: bool = True
    ) -> SAE:
        """Load an SAE folder (saekit's or SAELens 6's), in eval mode; NaN/inf weights are
        refused unless `check_weights=False`."""
        from saekit.saes.folder import load_sae_folder

        return load_sae_folder(folder, device=device, check_weights=check_weights)

    # ---- per-architecture hooks ------------------------------------------------------

    def init_extra(self, kw: dict[str, Any]) -> None:
        """Create the parameters beyond W_enc, W_dec, b_dec (default: `b_enc`)."""
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, **kw))

    def encode_parts(self, x_BD: Tensor) -> tuple[Tensor, Tensor]:
        """(pre-activations [B, F], feature activations [B, F])."""
        raise NotImplementedError

    def sparsity_penalty(self, pre_BF: Tensor | None, acts: Acts) -> Tensor | None:
        """Penalty before its coefficient, or None for architectures without one.

        `pre_BF` is None on the sparse path (`saekit.saes.sparse`), which passes `PairActs`.
        """
        return None

    @property
    def sparsity_coefficient(self) -> float:
        """The configured coefficient of the sparsity penalty (0 for k-sparse SAEs)."""
        if self.sparsity_setting == "k":
            return 0.0
        return float(getattr(self.cfg, self.sparsity_setting))

    @classmethod
    def size_defaults(cls, d_sae: int) -> dict[str, Any]:
        """Defaults of settings that depend on the dictionary size (matryoshka's prefixes)."""
        return {}

    @classmethod
    def dead_feature_methods(cls) -> tuple[str, ...]:
        """The trainer's dead-feature methods that apply to this architecture."""
        losses = (cls.dead_feature_loss,) if cls.dead_feature_loss else ()
        return ("none", *losses, *(("resample",) if cls.resamplable else ()))

    def aux_loss(
        self, x_BD: Tensor, target_BO: Tensor, pre_BF: Tensor, f_BF: Tensor,
        sae_out_BO: Tensor, mse: Tensor, dead_mask_F: Tensor | None,
    ) -> Tensor | None:  # fmt: skip
        """Auxiliary loss (dead features, gated's frozen decoder), or None."""
        return None

    def reconstruction_loss(self, acts: Acts, sae_out_BO: Tensor, target_BO: Tensor) -> Tensor:
        """The MSE part of the loss: the FVU of the reconstruction."""
        return fvu(target_BO, sae_out_BO)

    @property
    def unit_norm_decoder(self) -> bool:
        """Whether decoder rows are kept at unit norm during training."""
        return True

    # ---- the public computation --------------------------------------------------------

    def sae_in(self, x_BD: Tensor) -> Tensor:
        """The encoder's input: x, minus b_dec when `apply_b_dec_to_input`."""
        return x_BD - self.b_dec if self.cfg.apply_b_dec_to_input else x_BD

    def encode(self, x_BD: Tensor) -> Tensor:
        """Feature activations [B, F] for inputs [B, D] (any leading dims)."""
        return self.encode_parts(x_BD)[1]

    def decode(self, f_BF: Tensor) -> Tensor:
        """Reconstruction [B, O] from feature activations [B, F]."""
        return f_BF @ self.W_dec + self.b_dec

    def forward(
        self,
        x_BD: Tensor,
        target_BO: Tensor | None = None,
        *,
        dead_mask: Tensor | None = None,
        sparsity_coefficient: float | None = None,
        sparse_feature_acts: bool = False,
        approx_selection: bool = False,
    ) -> SAEOutput:
        """Encode, decode and compute the loss parts.

        `target_BO` defaults to `x_BD` (transcoders pass the output hook's activations).
        `dead_mask` (bool [F]) turns on the dead-feature loss (see `dead_feature_loss`).
        `sparsity_coefficient` overrides the configured L1/L0 coefficient (warm-up).
        `sparse_feature_acts=True` lets the sparse TopK path (`saekit.saes.sparse`) return
        `feature_acts` as a sparse CSR tensor instead of filling a dense [B, F] one, and
        `approx_selection=True` lets it choose the active pairs from a bfloat16 encoder
        product (where `approximate_selection`; values stay exact, near-ties may differ);
        every other path ignores both.
        """
        target_BO = x_BD if target_BO is None else target_BO
        if x_BD.shape[-1] != self.cfg.d_in or target_BO.shape[-1] != self.cfg.d_out:
            raise ValueError(
                f"expected inputs [..., {self.cfg.d_in}] and targets [..., {self.cfg.d_out}], "
                f"got {tuple(x_BD.shape)} and {tuple(target_BO.shape)}"
            )
        lead = x_BD.shape[:-1]
        x_BD, target_BO = x_BD.reshape(-1, self.cfg.d_in), target_BO.reshape(-1, self.cfg.d_out)
        pre_BF, f_BF = self.encode_parts(x_BD)
        sae_out_BO = self.decode(f_BF)
        zero = sae_out_BO.new_zeros(())
        mse = self.reconstruction_loss(DenseActs(f_BF), sae_out_BO, target_BO)
        coef = self.sparsity_coefficient if sparsity_coefficient is None else sparsity_coefficient
        penalty = self.sparsity_penalty(pre_BF, DenseActs(f_BF))
        sparsity = zero if penalty is None else coef * penalty
        if dead_mask is not None:
            dead_mask = dead_mask.to(device=f_BF.device, dtype=torch.bool)
        aux = self.aux_loss(x_BD, target_BO, pre_BF, f_BF, sae_out_BO, mse, dead_mask)
        aux = zero if aux is None else aux
        return SAEOutput(
            sae_out_BO.reshape(*lead, -1), f_BF.reshape(*lead, -1), mse + sparsity + aux,
            mse, sparsity, aux,
        )  # fmt: skip

    # ---- training helpers ---------------------------------------------------------------

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Remove the part of W_dec's gradient parallel to each (unit-norm) decoder row."""
        grad = self.W_dec.grad
        if not self.unit_norm_decoder or grad is None:
            return
        rows_FO = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        grad -= (grad * rows_FO).sum(dim=1, keepdim=True) * rows_FO

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Re-impose constraints after the update (unit-norm decoder rows, ...)."""
        if self.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def fold_activation_scale(self, scale: float, scale_out: float | None = None) -> None:
        """Rewrite weights so an SAE trained on `x * scale` works on raw `x`.

        Feature activations stay identical; `sae_out` comes out in raw units (divided by
        `scale_out`, which defaults to `scale`; transcoders may have a different one).
        Decoder rows are no longer unit-norm afterwards: do this once training is over.
        """
        scale_out = scale if scale_out is None else scale_out
        if self.cfg.apply_b_dec_to_input and scale_out != scale:
            raise ValueError("scale_out must equal scale when apply_b_dec_to_input is True")
        self.W_enc *= scale
        self.W_dec /= scale_out
        self.b_dec /= scale_out

    def extra_repr(self) -> str:
        c = self.cfg
        size = f"d_in={c.d_in}, d_sae={c.d_sae}" + (f", d_out={c.d_out}" if c.is_transcoder else "")
        settings = ", ".join(f"{k}={v}" for k, v in c.settings().items())
        return f"architecture={c.architecture!r}, {size}, {settings}"


def auxk_loss(
    sae: SAE,
    pre_BF: Tensor,
    dead_mask_F: Tensor | None,
    residual_BO: Tensor,
    pre_at: Callable[[SparseCode], Tensor],
) -> Tensor | None:
    """AuxK (Gao et al. 2024): reconstruct the residual from the top `aux_k` dead features.

    The pairs are chosen per token from `pre_BF` (no gradient needed); `pre_at(code)` gives
    the differentiable pre-activations at them (the dense forward indexes its own, the
    sparse path recomputes them). `aux_k` defaults to d_in // 2 (at most the dead count);
    the result is `aux_coefficient` times the FVU of the (detached) residual
    `target - sae_out` by the dead features' decoded activations.
    """
    if dead_mask_F is None or not bool(dead_mask_F.any()):
        return None
    k_aux = min(sae.cfg.aux_k or max(sae.cfg.d_in // 2, 1), int(dead_mask_F.sum()))
    with torch.no_grad():
        dead_pre_BF = torch.where(dead_mask_F, pre_BF.relu(), 0.0)
        code = code_from_topk(dead_pre_BF.topk(k_aux, dim=-1, sorted=False).indices)
    vals_N = pre_at(code).relu() * dead_mask_F[code.cols]
    aux_out_BO = PairActs(code, vals_N).decode(sae.W_dec)
    return sae.cfg.aux_coefficient * fvu(residual_BO, aux_out_BO)
