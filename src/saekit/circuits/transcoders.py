"""The transcoders that replace a model's MLPs: one per layer (cross-layer ones later).

The replacement model needs, of any transcoder set, the same five things:
`encode(layer, x)` (pre-activations and activations of that layer's features),
`decode_to(layer_out, layer_in, acts)` (what the features of `layer_in` write into the MLP
output of `layer_out`), the linear encoder of a feature (`encoder_vectors`) and its decoder
into a layer (`decoder_vectors`), and `bias_out(layer)`. A cross-layer transcoder implements
the same methods with `writes_from(layer_out)` listing every earlier layer.

Shapes: T positions, D d_model, F features, N a list of features.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from saekit.saes.base import SAE

_RESID_MID = re.compile(r"blocks\.(\d+)\.hook_resid_mid")
_NORMED = re.compile(r"model\.layers\.(\d+)\.post_attention_layernorm|blocks\.(\d+)\.ln2\.hook_normalized")
_MLP_OUT = re.compile(r"blocks\.(\d+)\.hook_mlp_out|model\.layers\.(\d+)\.mlp")
SUPPORTED = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka", "gated")
INPUT_HOOKS = (
    "blocks.L.hook_resid_mid, or the normed MLP input blocks.L.ln2.hook_normalized "
    "(model.layers.L.post_attention_layernorm)"
)
OUTPUT_HOOKS = "blocks.L.hook_mlp_out or model.layers.L.mlp"


def _linear_encoder(sae: SAE) -> tuple[Tensor, Tensor, Tensor]:
    """(E_DF, c_F, W_FO): pre-activations are `x @ E + c`, outputs `acts @ W + b_dec`."""
    W_enc, W_dec = sae.W_enc, sae.W_dec
    if sae.cfg.architecture == "gated":  # the magnitude path carries the activation
        W_enc, b = W_enc * sae.r_mag.exp(), sae.b_mag
    else:
        b = sae.b_enc
    if sae.cfg.architecture == "topk" and sae.cfg.rescale_acts_by_decoder_norm:
        norm_F = W_dec.norm(dim=1)
        W_enc, b, W_dec = W_enc * norm_F, b * norm_F, W_dec / norm_F[:, None]
    if sae.cfg.apply_b_dec_to_input:
        b = b - sae.b_dec @ W_enc
    return W_enc, b, W_dec


class PerLayerTranscoders:
    """One transcoder per layer, each reading that layer's MLP input and writing its output.

    Args:
        saes: transcoders, any order; each `cfg.metadata.hook_name` must be an MLP input
            (`blocks.L.hook_resid_mid`, or `model.layers.L.post_attention_layernorm`, the
            normed input) and `hook_name_out` that layer's MLP output.
        n_layers: the model's layer count; every layer needs a transcoder.
    """

    def __init__(self, saes: Sequence[SAE], n_layers: int) -> None:
        by_layer: dict[int, SAE] = {}
        reads: set[str] = set()
        for sae in saes:
            layer, read = _placement(sae)
            if layer in by_layer:
                raise ValueError(f"two transcoders for layer {layer}: give one per layer")
            by_layer[layer] = sae.eval()
            reads.add(read)
        missing = [i for i in range(n_layers) if i not in by_layer]
        if missing or len(by_layer) != n_layers:
            raise ValueError(
                f"attribution needs a transcoder for every layer 0..{n_layers - 1}; "
                f"missing layers {missing or sorted(set(by_layer) - set(range(n_layers)))}"
            )
        if len(reads) > 1:
            raise ValueError("mixed transcoder inputs: all must read hook_resid_mid, or all the normed input")
        self.read: Literal["resid", "normed"] = reads.pop()  # type: ignore[assignment]
        self.saes = [by_layer[i] for i in range(n_layers)]
        self.n_layers = n_layers
        self._linear = [_linear_encoder(s) for s in self.saes]

    def d_sae(self, layer: int) -> int:
        return self.saes[layer].cfg.d_sae

    def writes_from(self, layer_out: int) -> list[int]:
        """Layers whose features write into the MLP output of `layer_out` (per-layer: itself)."""
        return [layer_out]

    @torch.no_grad()
    def encode(self, layer: int, x_TD: Tensor) -> tuple[Tensor, Tensor]:
        """(pre-activations [T, F] of the linear encoder, activations [T, F])."""
        E, c, _ = self._linear[layer]
        return x_TD @ E + c, self.saes[layer].encode(x_TD)

    @torch.no_grad()
    def decode_to(self, layer_out: int, layer_in: int, acts_TF: Tensor) -> Tensor:
        """What features of `layer_in` with activations `acts_TF` write into `layer_out`'s MLP
        output, without the bias."""
        if layer_out != layer_in:
            return torch.zeros(acts_TF.shape[0], self.saes[layer_out].cfg.d_out or 0)
        return acts_TF @ self._linear[layer_in][2]

    def bias_out(self, layer: int) -> Tensor:
        """The constant the transcoders add to `layer`'s MLP output, [D]."""
        return self.saes[layer].b_dec.detach()

    def encoder_vectors(self, layer: int, feats_N: Tensor) -> Tensor:
        """Encoder directions [N, D] of features of `layer` (pre-activation = x . e + c)."""
        return self._linear[layer][0][:, feats_N].T.detach()

    def encoder_bias(self, layer: int, feats_N: Tensor) -> Tensor:
        """Encoder offsets [N] of features of `layer`."""
        return self._linear[layer][1][feats_N].detach()

    def decoder_vectors(self, layer_out: int, layer_in: int, feats_N: Tensor) -> Tensor:
        """Decoder directions [N, D] of features of `layer_in` into `layer_out`."""
        if layer_out != layer_in:
            return torch.zeros(len(feats_N), self._linear[layer_in][2].shape[1])
        return self._linear[layer_in][2][feats_N].detach()


def _placement(sae: SAE) -> tuple[int, str]:
    """(layer, "resid" | "normed") of a transcoder, from its hooks; ValueError otherwise."""
    meta = sae.cfg.metadata
    hook_in, hook_out = meta.hook_name or "", meta.hook_name_out or ""
    if sae.cfg.architecture not in SUPPORTED:
        raise ValueError(f"architecture {sae.cfg.architecture!r} not supported; one of {SUPPORTED}")
    if getattr(sae.cfg, "skip", False):
        raise ValueError("skip transcoders (W_skip) are not supported by attribution yet; use plain ones")
    if sae.cfg.architecture == "batchtopk" and sae.training:
        sae.eval()
    m_in = _RESID_MID.fullmatch(hook_in) or _NORMED.fullmatch(hook_in)
    m_out = _MLP_OUT.fullmatch(hook_out)
    if not m_in:
        raise ValueError(
            f"transcoder input hook {hook_in!r} is not an MLP input; use {INPUT_HOOKS}"
        )
    if not m_out:
        raise ValueError(
            f"transcoder output hook {hook_out!r} is not an MLP output (hook_name_out); "
            f"use {OUTPUT_HOOKS}"
        )
    layer = int(next(g for g in m_in.groups() if g is not None))
    if int(m_out.group(1) or m_out.group(2)) != layer:
        raise ValueError(f"transcoder reads layer {layer} but writes {hook_out!r}: same layer needed")
    return layer, "resid" if _RESID_MID.fullmatch(hook_in) else "normed"
