"""Where the residual stream, attention and MLP live inside a Hugging Face causal LM.

A `Layout` names, for one model, the module paths that TransformerLens-style hook names map
onto. It is detected from the module tree, so every family that follows the usual layouts
(GPT-2, Llama / Qwen2 / Mistral / SmolLM2, GPT-NeoX / Pythia, Gemma 1-3, ...) works.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

_LAYER_LISTS = (
    "model.layers",  # Llama, Qwen2, Mistral, Gemma, SmolLM2, Phi-3, OLMo
    "transformer.h",  # GPT-2, GPT-J, Bloom-like
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT (residual-stream hooks only)
    "model.language_model.layers",  # multimodal wrappers (Gemma 3, ...)
)
_FINAL_NORMS = (
    "model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",
    "model.language_model.norm",
)
_ATTENTIONS = ("self_attn", "attn", "attention")
_MLPS = ("mlp", "feed_forward")


@dataclass(frozen=True)
class Layout:
    """Module paths of one HF model. Paths inside a layer are relative to that layer.

    Attributes:
        layers: path of the `ModuleList` of decoder layers (`model.layers`).
        final_norm: path of the norm before the unembedding, or None.
        attn_out: module whose output is what attention adds to the residual stream.
        mlp_out: module whose output is what the MLP adds to the residual stream.
        mlp_in: the MLP module, whose *input* (after the norm before it) is what the MLP reads.
        resid_mid: module whose *input* is the residual stream between attention and MLP;
            None for parallel-residual models (GPT-J, Pythia), where that point does not exist.
    """

    layers: str
    final_norm: str | None
    attn_out: str | None
    mlp_out: str | None
    mlp_in: str | None
    resid_mid: str | None


def _first(candidates: tuple[str, ...], names: set[str], prefix: str = "") -> str | None:
    return next((c for c in candidates if prefix + c in names), None)


def detect_layout(model: nn.Module) -> Layout:
    """Find the decoder layers, final norm, attention and MLP of an HF causal LM."""
    names = {name for name, _ in model.named_modules()}
    layers = _first(_LAYER_LISTS, names)
    if layers is None:
        raise ValueError(
            f"saekit does not know where the decoder layers of {type(model).__name__} are "
            f"(looked for {', '.join(_LAYER_LISTS)}); use raw module paths as hook names"
        )
    first = f"{layers}.0."
    has = lambda sub: first + sub in names  # noqa: E731
    attn = _first(_ATTENTIONS, names, first)
    mlp = mlp_in = _first(_MLPS, names, first)
    parallel = bool(getattr(model.config, "use_parallel_residual", False)) or (
        model.config.model_type in {"gptj", "phi", "falcon", "cohere"}
    )
    if has("post_feedforward_layernorm"):
        # Gemma 2/3, OLMo 2: sub-layer outputs are normed before they join the residual.
        attn, mlp = "post_attention_layernorm", "post_feedforward_layernorm"
        resid_mid = "pre_feedforward_layernorm" if has("pre_feedforward_layernorm") else "mlp"
    elif parallel:
        resid_mid = None
    elif has("ln_2"):
        resid_mid = "ln_2"
    elif has("post_attention_layernorm") and (has("input_layernorm") or has("ln_1")):
        resid_mid = "post_attention_layernorm"
    else:
        resid_mid = None
    return Layout(
        layers=layers,
        final_norm=_first(_FINAL_NORMS, names),
        attn_out=attn,
        mlp_out=mlp,
        mlp_in=mlp_in,
        resid_mid=resid_mid,
    )
