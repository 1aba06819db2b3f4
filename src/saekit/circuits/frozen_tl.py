"""The frozen linear pieces of a TransformerLens `HookedTransformer` (the `tl:` backend).

The same interface as `frozen.FrozenModel` (HF Llama family), read from TransformerLens's
weights and hooks: `clean_forward` records `hook_embed` (the token nodes; positional
embeddings are a constant, as in circuit-tracer), `hook_resid_mid`, `hook_mlp_out`, every
`hook_scale` and `hook_pattern`; the frozen maps and their adjoints follow. LayerNorm (LN,
LNPre) and RMSNorm (RMS, RMSPre) are both linear once their scale is frozen (LN also centres).
A transcoder reading `blocks.L.ln2.hook_normalized` reads TransformerLens's hook: normalised,
before the norm's weight and bias.

Shapes: B batch (of targets), T positions, D d_model, H heads, E head dim, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.circuits.frozen import CleanRun

_NORMS = ("LN", "LNPre", "RMS", "RMSPre")


def check_supported_tl(lm) -> None:
    """ValueError unless the TransformerLens model is one attribution can freeze."""
    cfg = lm.model.cfg
    problems = []
    if cfg.normalization_type not in _NORMS:
        problems.append(f"normalization_type {cfg.normalization_type!r} (need one of {_NORMS})")
    if getattr(cfg, "parallel_attn_mlp", False) or getattr(cfg, "attn_only", False):
        problems.append("parallel or attention-only blocks")
    if getattr(cfg, "use_normalization_before_and_after", False):
        problems.append("norms after attention and MLP (Gemma-2 style)")
    if getattr(cfg, "output_logits_soft_cap", -1.0) > 0:
        problems.append("logit soft-capping")
    if cfg.positional_embedding_type not in ("standard", "rotary"):
        problems.append(f"positional_embedding_type {cfg.positional_embedding_type!r}")
    if problems:
        raise ValueError(f"attribution cannot freeze {lm.spec}: " + "; ".join(problems))


class TLFrozenModel:
    """`FrozenModel` for a TransformerLens model: norms and attention frozen by `run`."""

    def __init__(self, lm) -> None:
        check_supported_tl(lm)
        self.lm = lm
        self.tl = lm.model
        self.blocks = self.tl.blocks
        self.n_layers = self.tl.cfg.n_layers
        self.n_heads = self.tl.cfg.n_heads
        self.centred = self.tl.cfg.normalization_type.startswith("LN")

    @torch.no_grad()
    def clean_forward(self, input_ids_T: Tensor) -> CleanRun:
        """Run the prompt through TransformerLens, caching what the replacement model freezes."""
        ids = input_ids_T.to(self.lm.device).view(1, -1)
        logits, cache = self.tl.run_with_cache(ids, return_type="logits")
        L = range(self.n_layers)

        def stack(name: str) -> Tensor:
            return torch.stack([cache[f"blocks.{i}.{name}"][0] for i in L])

        embed = cache["hook_embed"][0]
        pos = cache["hook_pos_embed"][0] if "hook_pos_embed" in cache else None
        return CleanRun(
            embed, stack("hook_resid_mid"), stack("hook_mlp_out"), 1 / stack("ln1.hook_scale"),
            1 / stack("ln2.hook_scale"), 1 / cache["ln_final.hook_scale"][0],
            stack("attn.hook_pattern"), logits[0], const_TD=pos,
        )  # fmt: skip

    # -- norms ---------------------------------------------------------------------------------

    def _centre(self, x: Tensor) -> Tensor:
        return x - x.mean(-1, keepdim=True) if self.centred else x

    def _norm(self, ln, x: Tensor, inv_scale: Tensor, affine: bool = True) -> Tensor:
        y = self._centre(x) * inv_scale
        if not affine:
            return y
        y = y * ln.w if hasattr(ln, "w") else y
        return y + ln.b if hasattr(ln, "b") else y

    def _norm_adjoint(self, ln, g: Tensor, inv_scale: Tensor, affine: bool = True) -> Tensor:
        if affine and hasattr(ln, "w"):
            g = g * ln.w
        return self._centre(g * inv_scale)

    # -- frozen maps ---------------------------------------------------------------------------

    def attn(self, run: CleanRun, layer: int, resid_BTD: Tensor) -> Tensor:
        """Frozen attention of `layer`: what it adds to the residual stream (biases included)."""
        block = self.blocks[layer]
        h = self._norm(block.ln1, resid_BTD, run.scale_attn_LT1[layer])
        a = block.attn
        v = torch.einsum("...td,hde->...hte", h, a.W_V) + a.b_V[:, None, :]
        z = run.pattern_LHTT[layer] @ v
        return torch.einsum("...hte,hed->...td", z, a.W_O) + a.b_O

    def mlp_norm(self, run: CleanRun, layer: int, resid_BTD: Tensor) -> Tensor:
        """`blocks.L.ln2.hook_normalized`: normalised, before the norm's weight and bias."""
        return self._norm(self.blocks[layer].ln2, resid_BTD, run.scale_mlp_LT1[layer], affine=False)

    def final(self, run: CleanRun, resid_BTD: Tensor) -> Tensor:
        """Logits through the frozen final norm and the unembedding."""
        normed = self._norm(self.tl.ln_final, resid_BTD, run.scale_final_T1)
        return normed @ self.tl.W_U + self.tl.b_U

    # -- adjoints ------------------------------------------------------------------------------

    def attn_adjoint(self, run: CleanRun, layer: int, grad_BTD: Tensor) -> Tensor:
        """Gradient at the residual stream entering `layer` of `<grad, attn(resid)>`."""
        block = self.blocks[layer]
        a = block.attn
        g = torch.einsum("btd,hed->bhte", grad_BTD, a.W_O)
        g = run.pattern_LHTT[layer].transpose(-1, -2) @ g
        g = torch.einsum("bhte,hde->btd", g, a.W_V)
        return self._norm_adjoint(block.ln1, g, run.scale_attn_LT1[layer])

    def read_vectors(self, run: CleanRun, layer: int, vecs_ND: Tensor, pos_N: Tensor) -> Tensor:
        """Directions read from `ln2.hook_normalized` at positions, as read from the residual."""
        return self._norm_adjoint(self.blocks[layer].ln2, vecs_ND, run.scale_mlp_LT1[layer][pos_N], affine=False)

    def final_adjoint(self, run: CleanRun, direction_D: Tensor, position: int) -> Tensor:
        """A direction read after the final norm at `position`, as read from the residual, [D]."""
        return self._norm_adjoint(self.tl.ln_final, direction_D, run.scale_final_T1[position])

    def unembed_matrix(self) -> Tensor:
        """[D, V]."""
        return self.tl.W_U

    def unembed_bias(self) -> Tensor | None:
        """[V]."""
        return self.tl.b_U
