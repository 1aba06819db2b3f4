"""saekit's hook names on an HF GPT-2 read the tensors TransformerLens caches for the same weights.

Needs TransformerLens with `HookedTransformer` (2.x / 3.x: the `tl` extra, which
scripts/setup.sh installs); skipped without it, except under SAEKIT_CI=1, where it fails.
"""

from __future__ import annotations

import pytest
import torch

from conftest import import_peer

HookedTransformer = import_peer("transformer_lens.HookedTransformer").HookedTransformer

from saekit.models import LanguageModel  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    """A tiny random HF GPT-2 and the TransformerLens model holding the same weights."""
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=101, n_embd=32, n_layer=3, n_head=4, n_positions=16))
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    hf.eval()
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=128, d_vocab=101, n_ctx=16,
        act_fn="gelu_new", normalization_type="LN", default_prepend_bos=False,
    )  # fmt: skip
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(
        convert_gpt2_weights(hf, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    return LanguageModel(hf, None, spec="tiny-gpt2"), LanguageModel(tl.eval(), None, spec="tl:tiny")


NAMES = [
    f"blocks.{i}.{s}"
    for i in range(3)
    for s in (
        "hook_resid_pre",
        "hook_resid_mid",
        "hook_resid_post",
        "hook_attn_out",
        "hook_mlp_out",
    )
]


def test_hf_hook_names_equal_transformer_lens_cache(pair):
    hf_lm, tl_lm = pair
    ids = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(0))
    _, cache = tl_lm.model.run_with_cache(ids, names_filter=lambda n: n in NAMES)
    acts = hf_lm.run_to_hooks(ids, NAMES)
    for name in NAMES:
        torch.testing.assert_close(acts[name], cache[name], atol=1e-4, rtol=1e-4, msg=name)
    torch.testing.assert_close(hf_lm.logits(ids), tl_lm.logits(ids), atol=1e-4, rtol=1e-4)


def test_tl_backend_reads_its_own_hook_points(pair):
    _, tl_lm = pair
    assert tl_lm.backend == "tl" and (tl_lm.n_layers, tl_lm.d_model) == (3, 32)
    ids = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(1))
    _, cache = tl_lm.model.run_with_cache(ids)
    names = ["blocks.1.hook_resid_pre", "blocks.2.hook_mlp_out", "blocks.0.attn.hook_pattern"]
    acts = tl_lm.run_to_hooks(ids, names)
    for name in names:
        torch.testing.assert_close(acts[name], cache[name])
    final = tl_lm.run_to_hooks(ids, ["blocks.3.hook_resid_pre"])["blocks.3.hook_resid_pre"]
    torch.testing.assert_close(final, cache["blocks.2.hook_resid_post"])
    with tl_lm.splice("blocks.1.hook_resid_post", torch.zeros_like):
        zeroed = tl_lm.run_to_hooks(ids, ["blocks.2.hook_resid_pre"])["blocks.2.hook_resid_pre"]
    assert zeroed.abs().max() == 0
    with pytest.raises(ValueError, match=r"blocks\.\{0\.\.2\}\.hook_resid_pre"):
        tl_lm.resolve_hook("blocks.5.hook_resid_pre")
