"""Logit lens and token-set enrichment against plain torch on the tiny model."""

from __future__ import annotations

import pytest
import torch

from saekit.analysis.enrichment import (
    TOKEN_SETS,
    token_set_enrichment,
    token_set_masks,
    top_features_per_set,
)
from saekit.analysis.logit_lens import feature_logit_effects, logit_effects


@pytest.fixture(scope="module")
def sae():
    from saekit.saes import SAE

    torch.manual_seed(1)
    return SAE.create("relu", d_in=64, d_sae=30)


def test_logit_lens_equals_plain_topk(tiny_lm, sae):
    W_U_DV = tiny_lm.model.lm_head.weight.detach().T  # independent of lm.unembed_matrix
    for f in (0, 7, 29):
        logits_V = sae.W_dec.detach()[f] @ W_U_DV
        eff = feature_logit_effects(sae, tiny_lm, f, k=8)
        top, bottom = logits_V.topk(8), logits_V.topk(8, largest=False)
        assert [i for i, _, _ in eff.positive] == top.indices.tolist()
        assert [i for i, _, _ in eff.negative] == bottom.indices.tolist()
        torch.testing.assert_close(torch.tensor([v for *_, v in eff.positive]), top.values)
        torch.testing.assert_close(torch.tensor([v for *_, v in eff.negative]), bottom.values)
        assert eff.positive[0][1] == tiny_lm.tokenizer.decode([eff.positive[0][0]])
    batched = logit_effects(sae, tiny_lm, [29, 7], k=8)
    single = feature_logit_effects(sae, tiny_lm, 7, k=8)
    assert batched[1].feature == 7
    assert [i for i, *_ in batched[1].positive] == [i for i, *_ in single.positive]
    assert [i for i, *_ in batched[1].negative] == [i for i, *_ in single.negative]


def test_logit_lens_rejects_bad_input(tiny_lm, sae):
    from saekit.saes import SAE

    with pytest.raises(ValueError, match="out of range"):
        feature_logit_effects(sae, tiny_lm, 30)
    with pytest.raises(ValueError, match="unembedding"):
        feature_logit_effects(SAE.create("relu", d_in=64, d_sae=4, d_out=32), tiny_lm, 0)


def test_token_set_predicates():
    member = {
        name: [
            t
            for t in (" the", "The", " 42", "7", ",", "...", "\n", "ing", "NASA", " Paris")
            if pred(t)
        ]
        for name, pred in TOKEN_SETS.items()
    }
    assert member["digits"] == [" 42", "7"]
    assert member["capitalised words"] == ["The", "NASA", " Paris"]
    assert member["all-caps words"] == ["NASA"]
    assert member["space-prefixed words"] == [" the", " Paris"]
    assert member["punctuation"] == [",", "..."]
    assert member["whitespace and newlines"] == ["\n"]


def test_enrichment_equals_naive_standardized_difference(tiny_lm, sae):
    scores_FS, names, stats = token_set_enrichment(sae, tiny_lm, chunk=7)
    assert scores_FS.shape == (30, len(names))
    masks = token_set_masks(tiny_lm.tokenizer, tiny_lm.model.lm_head.weight.shape[0])
    logits_FV = (sae.W_dec.detach() @ tiny_lm.model.lm_head.weight.detach().T).double()
    mu, sd = logits_FV.mean(1), logits_FV.std(1, unbiased=False)
    for s, name in enumerate(names):
        expected = (logits_FV[:, masks[name]].mean(1) - mu) / sd
        torch.testing.assert_close(scores_FS[:, s], expected.float(), rtol=1e-4, atol=1e-5)
    z = (logits_FV - mu[:, None]) / sd[:, None]
    torch.testing.assert_close(stats["skew"], z.pow(3).mean(1).float(), rtol=1e-4, atol=1e-5)
    # a feature whose direction is the mean unembedding of the digits boosts digits most
    digits = masks["digits"]
    assert digits.sum() >= 3
    with torch.no_grad():
        W_U_VD = tiny_lm.model.lm_head.weight
        sae.W_dec[5] = W_U_VD[digits].mean(0) - W_U_VD.mean(0)
        sae.W_dec[5] /= sae.W_dec[5].norm()
    scores_FS, names, _ = token_set_enrichment(sae, tiny_lm)
    top = top_features_per_set(scores_FS, names, n=3)
    assert top["digits"][0][0] == 5 and len(top["digits"]) == 3


def test_top_features_per_set_by_hand():
    scores = torch.tensor([[0.1, 2.0], [3.0, -1.0], [0.5, 0.7]])
    assert top_features_per_set(scores, ["a", "b"], n=2) == {
        "a": [(1, 3.0), (2, 0.5)],
        "b": [(0, 2.0), (2, pytest.approx(0.7))],
    }
