"""Attribution on the TransformerLens backend: tiny random HookedTransformers (GPT-2 style with
LayerNorm and learned positions; Llama style with RMSNorm, rotary and grouped-query heads).

Needs TransformerLens (the `tl` extra); skipped without it, except under SAEKIT_CI=1.
"""

from __future__ import annotations

import pytest
import torch

from circuits_helpers import random_transcoders
from conftest import import_peer

import_peer("transformer_lens")

from saekit.circuits import PerLayerTranscoders, ReplacementModel, attribute  # noqa: E402
from saekit.circuits.interventions import intervene  # noqa: E402
from saekit.models import LanguageModel  # noqa: E402

CONFIGS = {
    "gpt2-ln": dict(normalization_type="LN", act_fn="gelu_new", positional_embedding_type="standard"),
    "llama-rms": dict(normalization_type="RMS", act_fn="silu", gated_mlp=True, n_key_value_heads=2,
                      positional_embedding_type="rotary", rotary_dim=8, final_rms=True),
}  # fmt: skip


def tiny_tl(kind: str) -> LanguageModel:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=97,
                                  n_ctx=32, default_prepend_bos=False, **CONFIGS[kind])  # fmt: skip
    tl = HookedTransformer(cfg)
    with torch.no_grad():  # non-trivial norm weights and biases, so that they are exercised
        for name, p in tl.named_parameters():
            if name.endswith((".w", ".b", "b_V", "b_O", "b_U")) or "ln" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return LanguageModel(tl.eval(), None, spec=f"tl:tiny-{kind}")


@pytest.fixture(scope="module", params=list(CONFIGS))
def tl_lm(request):
    return tiny_tl(request.param)


@pytest.mark.parametrize("read", ["resid", "normed"])
def test_tl_replacement_is_exact_and_edges_sum_to_inputs(tl_lm, read):
    model = ReplacementModel(tl_lm, PerLayerTranscoders(random_transcoders(tl_lm, read=read), 3))
    ids = torch.randint(0, 97, (9,), generator=torch.Generator().manual_seed(1))
    prompt = model.prepare(ids, frozen_positions=[0])
    clean = tl_lm.logits(ids[None])[0]
    torch.testing.assert_close(prompt.run.logits_TV, clean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.forward(prompt).logits_TV, clean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.forward(prompt, recompute=True).logits_TV, clean, atol=1e-5, rtol=1e-5)
    graph = attribute(model, prompt, batch_size=29)
    assert graph.n_features > 20
    # biases (and positional embeddings, frozen positions): every source removed, forward only
    none = model.forward(prompt, feature_acts_N=torch.zeros_like(prompt.acts_N), embed_scale=0, error_scale=0)
    edges = graph.adjacency[: graph.n_features].sum(1).double()
    torch.testing.assert_close(edges + none.pre_N.double(), prompt.pre_N.double(), atol=2e-5, rtol=1e-5)
    last, bias = clean[-1], none.logits_TV[-1]
    target = (last - last.mean() - bias + bias.mean())[graph.logit_ids_K]
    torch.testing.assert_close(graph.adjacency[graph.logit_start :].sum(1), target, atol=2e-5, rtol=1e-5)
    # the real TransformerLens model, the change spliced at hook_mlp_out, moves the same way
    node = int(graph.adjacency[graph.logit_start, : graph.n_features].abs().argmax())
    result = intervene(model, graph, tuple(graph.features_N3[node].tolist()), factor=0.0, prompt=prompt)
    torch.testing.assert_close(result.actual_direct_K, result.predicted_direct_K, atol=1e-5, rtol=1e-4)


def test_tl_models_attribution_cannot_freeze_are_named(tl_lm):
    tl_lm.model.cfg.parallel_attn_mlp = True
    try:
        with pytest.raises(ValueError, match="parallel"):
            ReplacementModel(tl_lm, PerLayerTranscoders(random_transcoders(tl_lm), 3))
    finally:
        tl_lm.model.cfg.parallel_attn_mlp = False
