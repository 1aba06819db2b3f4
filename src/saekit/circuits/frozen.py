"""A Llama-family forward pass whose attention patterns and norm scales can be frozen.

`clean_forward` runs one prompt through an HF Llama-style model (Llama, SmolLM2, Mistral,
Qwen2) with its own weights, recording what the local replacement model freezes: every
RMSNorm's denominator and every attention pattern. With those fixed, the map from what is
written into the residual stream (token embeddings, MLP outputs) to what is read from it
(MLP inputs, logits) is linear; `FrozenModel` applies it forwards (`attn`, `norm`) and
backwards (`attn_adjoint`, `norm_adjoint`).

Shapes: B batch (of targets), T positions, D d_model, H heads, K key/value heads, E head dim,
V vocabulary, L layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

_NEEDED = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "input_layernorm", "post_attention_layernorm", "mlp")  # fmt: skip


def _rms_scale(x_TD: Tensor, eps: float) -> Tensor:
    """1 / RMS(x) per position, [T, 1] (computed in float32 as HF's RMSNorm)."""
    return torch.rsqrt(x_TD.float().pow(2).mean(-1, keepdim=True) + eps).to(x_TD.dtype)


def check_supported(lm) -> None:
    """ValueError unless `lm` is an HF Llama-family model the replacement model can freeze."""
    if lm.backend != "hf" or lm.layout is None or lm.layout.layers != "model.layers":
        raise ValueError(
            f"attribution supports HF Llama-family models (Llama, SmolLM2, Mistral, Qwen2); "
            f"{lm.spec} is a {type(lm.model).__name__} (backend {lm.backend})"
        )
    names = {n for n, _ in lm.model.named_modules()}
    missing = [n for n in _NEEDED if f"model.layers.0.{n}" not in names]
    if missing or "model.norm" not in names or "model.rotary_emb" not in names:
        raise ValueError(
            f"{type(lm.model).__name__} lacks the Llama modules attribution needs "
            f"({', '.join(missing) or 'model.norm / model.rotary_emb'})"
        )
    if any(f"model.layers.0.self_attn.{n}" in names for n in ("q_norm", "k_norm")):
        raise ValueError(f"{type(lm.model).__name__} has q/k norms (Qwen3-style): not supported")


@dataclass
class CleanRun:
    """What one clean forward of a prompt records (batch of one, so no batch dimension).

    Attributes:
        embed_TD: token embeddings (the residual stream entering layer 0).
        resid_mid_LTD: residual stream between attention and MLP, per layer.
        mlp_out_LTD: the true MLP outputs.
        scale_attn_LT1, scale_mlp_LT1, scale_final_T1: frozen RMSNorm denominators (1/RMS).
        pattern_LHTT: frozen attention patterns (softmax output).
        logits_TV: the model's logits.
        const_TD: a constant added to the token embeddings (TransformerLens positional
            embeddings), or None.
    """

    embed_TD: Tensor
    resid_mid_LTD: Tensor
    mlp_out_LTD: Tensor
    scale_attn_LT1: Tensor
    scale_mlp_LT1: Tensor
    scale_final_T1: Tensor
    pattern_LHTT: Tensor
    logits_TV: Tensor
    const_TD: Tensor | None = None


class FrozenModel:
    """The linear pieces of an HF Llama-family model, with norms and attention frozen by `run`."""

    def __init__(self, lm) -> None:
        check_supported(lm)
        self.lm = lm
        self.hf = lm.model
        self.layers = self.hf.model.layers
        cfg = self.hf.config.get_text_config()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.n_layers = len(self.layers)

    # -- the clean forward ---------------------------------------------------------------------

    @torch.no_grad()
    def clean_forward(self, input_ids_T: Tensor) -> CleanRun:
        """Run the prompt, recording norm scales and attention patterns (matches HF logits)."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        ids = input_ids_T.to(self.lm.device).view(1, -1)
        T = ids.shape[1]
        x = self.hf.get_input_embeddings()(ids)[0]
        embed = x.clone()
        pos = torch.arange(T, device=x.device).view(1, -1)
        cos, sin = self.hf.model.rotary_emb(x[None], position_ids=pos)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        mids, outs, s_attn, s_mlp, patterns = [], [], [], [], []
        for layer in self.layers:
            attn = layer.self_attn
            s1 = _rms_scale(x, layer.input_layernorm.variance_epsilon)
            h = layer.input_layernorm.weight * (x * s1)
            q = attn.q_proj(h).view(T, -1, self.head_dim).transpose(0, 1)[None]
            k = attn.k_proj(h).view(T, -1, self.head_dim).transpose(0, 1)[None]
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k = k[0].repeat_interleave(self.n_heads // self.n_kv, dim=0)
            scores = (q[0] @ k.transpose(1, 2)) * attn.scaling
            scores = scores.masked_fill(~causal, float("-inf"))
            pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(x.dtype)
            x = x + self._attn_with(pattern, attn, h)
            s2 = _rms_scale(x, layer.post_attention_layernorm.variance_epsilon)
            mlp_out = layer.mlp(layer.post_attention_layernorm.weight * (x * s2))
            mids.append(x.clone())
            outs.append(mlp_out)
            s_attn.append(s1)
            s_mlp.append(s2)
            patterns.append(pattern)
            x = x + mlp_out
        s_final = _rms_scale(x, self.hf.model.norm.variance_epsilon)
        logits = self.hf.get_output_embeddings()(self.hf.model.norm.weight * (x * s_final))
        return CleanRun(
            embed, torch.stack(mids), torch.stack(outs), torch.stack(s_attn),
            torch.stack(s_mlp), s_final, torch.stack(patterns), logits,
        )  # fmt: skip

    # -- frozen linear maps (forward) -----------------------------------------------------------

    def _attn_with(self, pattern_HTT: Tensor, attn: nn.Module, h_TD: Tensor) -> Tensor:
        """Attention output for a normed input with a given pattern, [..., T, D]."""
        lead = h_TD.shape[:-2]
        T = h_TD.shape[-2]
        v = attn.v_proj(h_TD).view(*lead, T, self.n_kv, self.head_dim).transpose(-2, -3)
        v = v.repeat_interleave(self.n_heads // self.n_kv, dim=-3)  # [..., H, T, E]
        z = (pattern_HTT @ v).transpose(-2, -3).reshape(*lead, T, -1)
        return attn.o_proj(z)

    def attn(self, run: CleanRun, layer: int, resid_BTD: Tensor) -> Tensor:
        """Frozen attention of `layer` (norm scale and pattern from `run`): what it adds."""
        mod = self.layers[layer]
        h = mod.input_layernorm.weight * (resid_BTD * run.scale_attn_LT1[layer])
        return self._attn_with(run.pattern_LHTT[layer], mod.self_attn, h)

    def mlp_norm(self, run: CleanRun, layer: int, resid_BTD: Tensor) -> Tensor:
        """The frozen post-attention norm of `layer` (the MLP's input)."""
        return self.layers[layer].post_attention_layernorm.weight * (
            resid_BTD * run.scale_mlp_LT1[layer]
        )

    def final(self, run: CleanRun, resid_BTD: Tensor) -> Tensor:
        """Logits from the final residual stream through the frozen final norm."""
        normed = self.hf.model.norm.weight * (resid_BTD * run.scale_final_T1)
        return self.hf.get_output_embeddings()(normed)

    # -- adjoints (gradients of the frozen maps; no autograd) -----------------------------------

    def attn_adjoint(self, run: CleanRun, layer: int, grad_BTD: Tensor) -> Tensor:
        """Gradient at the residual stream entering `layer` of `<grad, attn(resid)>`."""
        mod = self.layers[layer]
        attn = mod.self_attn
        B, T, _ = grad_BTD.shape
        g = (grad_BTD @ attn.o_proj.weight).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        g = run.pattern_LHTT[layer].transpose(-1, -2) @ g  # [B, H, T, E]
        g = g.view(B, self.n_kv, self.n_heads // self.n_kv, T, self.head_dim).sum(2)
        g = g.transpose(1, 2).reshape(B, T, -1) @ attn.v_proj.weight
        return g * mod.input_layernorm.weight * run.scale_attn_LT1[layer]

    def mlp_norm_adjoint(self, run: CleanRun, layer: int, vec_BTD: Tensor) -> Tensor:
        """A direction read after the post-attention norm, as one read from the residual."""
        return vec_BTD * self.layers[layer].post_attention_layernorm.weight * run.scale_mlp_LT1[layer]

    def read_vectors(self, run: CleanRun, layer: int, vecs_ND: Tensor, pos_N: Tensor) -> Tensor:
        """Directions read after the post-attention norm at positions, as read from the residual."""
        norm = self.layers[layer].post_attention_layernorm
        return vecs_ND * norm.weight * run.scale_mlp_LT1[layer][pos_N]

    def final_adjoint(self, run: CleanRun, direction_D: Tensor, position: int) -> Tensor:
        """A direction read from the final norm's output at `position`, as one read from the
        final residual stream, [D]."""
        return direction_D * self.hf.model.norm.weight * run.scale_final_T1[position]

    def unembed_matrix(self) -> Tensor:
        """[D, V] (after the final norm)."""
        return self.hf.get_output_embeddings().weight.T

    def unembed_bias(self) -> Tensor | None:
        """[V] or None."""
        return self.hf.get_output_embeddings().bias


def frozen_model(lm) -> FrozenModel:
    """The frozen model of `lm`'s backend: HF Llama family, or TransformerLens (`tl:`)."""
    if lm.backend == "tl":
        from saekit.circuits.frozen_tl import TLFrozenModel

        return TLFrozenModel(lm)  # type: ignore[return-value]
    return FrozenModel(lm)
