"""The real default model (smollm2-135m): saekit's hooks equal a plain transformers forward."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.integration

TEXT = [
    "The quick brown fox jumps over the lazy dog, and then it runs away into the forest.",
    "def add(a, b):\n    return a + b  # a small Python function",
]


def _batch(lm):
    tok = lm.tokenizer
    tok.padding_side = "right"
    batch = tok(TEXT, return_tensors="pt", padding=True)
    return batch.input_ids, batch.attention_mask


def test_resid_pre_7_equals_output_of_decoder_layer_6(default_lm):
    from transformers import AutoModelForCausalLM

    from saekit.models.loading import _cache_root

    assert (default_lm.n_layers, default_lm.d_model) == (30, 576)
    ids, mask = _batch(default_lm)
    acts = default_lm.run_to_hooks(ids, ["blocks.7.hook_resid_pre"], attention_mask=mask)
    # Reference: a plain transformers forward of the same weights (saekit's cached copy).
    plain = AutoModelForCausalLM.from_pretrained(_cache_root() / "models" / "smollm2-135m").eval()
    with torch.no_grad():
        hidden = plain(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    keep = mask.bool()
    assert acts["blocks.7.hook_resid_pre"].shape == (2, ids.shape[1], 576)
    torch.testing.assert_close(acts["blocks.7.hook_resid_pre"][keep], hidden[7][keep])


@pytest.mark.slow
def test_cached_model_equals_the_gguf(default_lm):
    """The cached save_pretrained copy gives the logits of a fresh GGUF load (~30-60 s)."""
    from transformers import AutoModelForCausalLM

    from saekit.models.loading import smollm2_gguf

    ids, mask = _batch(default_lm)
    gguf = smollm2_gguf()
    plain = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    with torch.no_grad():
        expected = plain(ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(default_lm.logits(ids, mask)[keep], expected[keep])


def test_special_tokens(default_lm):
    assert default_lm.bos_token_id is not None
    assert default_lm.bos_token_id in default_lm.special_token_ids
    assert default_lm.unembed_matrix().shape == (576, len(default_lm.tokenizer))
