"""Finding features: logit lens by token, active features per token, ablation effects on the
loss (batched, checked against one `steer(..., mode="ablate")` forward per feature)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saekit import SAE
from saekit.models.generate import encode_prompts
from saekit.steering import find, steer

HOOK = "blocks.2.hook_resid_pre"
TEXT = "Lists are mutable sequences, typically used to store collections."


@pytest.fixture(scope="module")
def sae(tiny_lm):
    torch.manual_seed(0)
    sae = SAE.create("relu", d_in=64, d_sae=96,
                     metadata={"model_name": tiny_lm.spec, "hook_name": HOOK})  # fmt: skip
    with torch.no_grad():
        sae.b_enc.fill_(-0.05)
    return sae


def test_features_for_token_is_the_logit_lens_column(tiny_lm, sae):
    tid = tiny_lm.tokenizer(" the", add_special_tokens=False)["input_ids"]
    assert len(tid) == 1
    got = find.features_for_token(sae, tiny_lm, " the", k=5)
    W_U = tiny_lm.unembed_matrix().double()
    scores = sae.W_dec.detach().double() @ W_U[:, tid[0]]
    assert [s.feature for s in got] == scores.topk(5).indices.tolist()
    torch.testing.assert_close(torch.tensor([s.score for s in got]).double(),
                               scores.topk(5).values, rtol=1e-5, atol=1e-5)  # fmt: skip
    assert find.features_for_token(sae, tiny_lm, tid[0], k=5) == got


def test_features_for_token_needs_one_token(tiny_lm, sae):
    with pytest.raises(ValueError, match="token=.* is [0-9]+ tokens"):
        find.features_for_token(sae, tiny_lm, " collections of things")
    with pytest.raises(ValueError, match="out of range"):
        find.features_for_token(sae, tiny_lm, 10**6)


def test_text_features_are_the_top_activations(tiny_lm, sae):
    result = find.text_features(sae, tiny_lm, TEXT, k=4)
    ids, _ = encode_prompts(tiny_lm, [TEXT])
    f_TF = sae.encode(tiny_lm.run_to_hooks(ids, [HOOK])[HOOK])[0].detach()
    assert len(result.tokens) == ids.shape[1] == len(result.features)
    for t, feats in enumerate(result.features):
        top = f_TF[t].topk(4)
        want = [(int(i), float(v)) for v, i in zip(top.values, top.indices, strict=True) if v > 0]
        assert [(s.feature, pytest.approx(s.score)) for s in feats] == want
    assert result.to_dict()["tokens"][0] == "<s>"


def test_ablation_effects_equal_one_steered_forward_per_feature(tiny_lm, sae):
    clean, effects = find.ablation_effects(sae, tiny_lm, TEXT, batch_size=7)
    ids, _ = encode_prompts(tiny_lm, [TEXT])
    targets = ids[0, 1:]
    ref_clean = F.cross_entropy(tiny_lm.logits(ids)[0, :-1], targets, reduction="none")
    assert clean == pytest.approx(float(ref_clean.mean()), abs=1e-6)
    assert len(effects) > 10
    deltas = [e.delta_loss for e in effects]
    assert deltas == sorted(deltas, reverse=True)
    for e in effects[:5] + effects[-5:]:
        with steer(tiny_lm, sae, [e.feature], mode="ablate", positions=slice(1, None)):
            loss = F.cross_entropy(tiny_lm.logits(ids)[0, :-1], targets, reduction="none")
        assert e.delta_loss == pytest.approx(float((loss - ref_clean).mean()), abs=1e-5)
        assert e.max_delta == pytest.approx(float((loss - ref_clean).abs().max()), abs=1e-5)
    # features named explicitly, inactive ones included: an inactive feature changes nothing
    f_TF = sae.encode(tiny_lm.run_to_hooks(ids, [HOOK])[HOOK])[0, 1:]
    inactive = int((f_TF.sum(0) == 0).nonzero()[0])
    _, named = find.ablation_effects(sae, tiny_lm, TEXT, features=[inactive])
    assert named[0].delta_loss == 0.0 and named[0].positions == 0


def test_typical_activations_by_hand(tiny_lm, sae):
    texts = [TEXT, "Tuples are immutable."]
    got = find.typical_activations(sae, tiny_lm, texts)
    acts = []
    for text in texts:
        ids, _ = encode_prompts(tiny_lm, [text])
        acts.append(sae.encode(tiny_lm.run_to_hooks(ids, [HOOK])[HOOK])[0, 1:])  # BOS left out
    f_NF = torch.cat(acts).double()
    fired = (f_NF > 0).sum(0)
    want = f_NF.sum(0) / fired
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_logit_concentration(tiny_lm, sae):
    top_F, z_F = find.logit_concentration(sae, tiny_lm, chunk=40)
    logits = sae.W_dec.detach().double() @ tiny_lm.unembed_matrix().double()
    assert torch.equal(top_F, logits.argmax(1))
    z = (logits.max(1).values - logits.mean(1)) / logits.std(1)
    torch.testing.assert_close(z_F.double(), z, rtol=1e-4, atol=1e-4)
