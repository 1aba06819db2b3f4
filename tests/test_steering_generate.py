"""`lm.generate` and steering during generation: the KV cache gives what full recomputation
gives, batched prompts, seeded sampling, and HF's own `generate` under `steer`."""

from __future__ import annotations

import pytest
import torch

from saekit import SAE
from saekit.models.generate import encode_prompts, generate_ids, sample_next
from saekit.steering import Intervention, steer

HOOK = "blocks.2.hook_resid_pre"
PROMPTS = ["The quick brown fox", "Lists are mutable sequences, typically used", "x"]


@pytest.fixture(scope="module")
def sae(tiny_lm):
    torch.manual_seed(0)
    sae = SAE.create("topk", d_in=64, d_sae=128, k=8,
                     metadata={"model_name": tiny_lm.spec, "hook_name": HOOK})  # fmt: skip
    with torch.no_grad():
        sae.W_dec.mul_(6.0)  # strong enough to change greedy choices of the random model
    return sae


def test_generate_returns_text_for_text(tiny_lm):
    one = tiny_lm.generate("The quick", max_new_tokens=5, stop_at_eos=False)
    assert isinstance(one, str)
    many = tiny_lm.generate(["The quick", "Lists"], max_new_tokens=5, stop_at_eos=False)
    assert isinstance(many, list) and len(many) == 2 and many[0] == one
    out = tiny_lm.generate(PROMPTS, max_new_tokens=6, return_ids=True, stop_at_eos=False)
    assert out.tokens_BT.shape == (3, out.prompt_length + 6)
    ids, mask = encode_prompts(tiny_lm, PROMPTS)
    assert torch.equal(out.tokens_BT[:, : out.prompt_length], ids)
    assert out.attention_mask_BT[:, : out.prompt_length].equal(mask)


@pytest.mark.parametrize(
    "intervention",
    [
        dict(features={3: 8.0, 40: -5.0}, mode="add"),
        dict(features={3: 8.0}, mode="add", positions="generated"),
        dict(features={3: 8.0}, mode="add", positions="prompt"),
        dict(features={3: 8.0}, mode="add", positions=slice(-2, None)),
        dict(features={3: 8.0}, mode="add", positions=[0, 7]),
        dict(features={5: 20.0, 6: 0.0}, mode="clamp"),
        dict(features={5: 4.0}, mode="scale", positions="generated"),
    ],
)
def test_steered_generation_with_cache_equals_without(tiny_lm, sae, intervention):
    ids, mask = encode_prompts(tiny_lm, PROMPTS)
    plain = generate_ids(tiny_lm, ids, mask, 12, stop_at_eos=False)
    with steer(tiny_lm, sae, **intervention):
        cached = generate_ids(tiny_lm, ids, mask, 12, stop_at_eos=False)
        full = generate_ids(tiny_lm, ids, mask, 12, use_cache=False, stop_at_eos=False)
    assert torch.equal(cached, full)
    assert not torch.equal(cached, plain)  # the steering did something


def test_steered_tokens_are_the_argmax_of_steered_full_forwards(tiny_lm, sae):
    """Greedy steered generation re-derived by hand: one full steered forward per token."""
    ids, mask = encode_prompts(tiny_lm, PROMPTS[:1])
    with steer(tiny_lm, sae, {3: 8.0}, positions="generated"):
        out = generate_ids(tiny_lm, ids, mask, 6, stop_at_eos=False)
    seq = ids
    for _ in range(6):
        # positions "generated" = columns >= prompt length, applied by hand with "all" + a slice
        with steer(tiny_lm, sae, {3: 8.0}, positions=slice(ids.shape[1], None)):
            nxt = tiny_lm.logits(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_hf_generate_called_directly_is_steered_the_same(tiny_lm, sae):
    ids, mask = encode_prompts(tiny_lm, PROMPTS)
    with steer(tiny_lm, sae, {3: 8.0}, positions="generated"):
        ours = generate_ids(tiny_lm, ids, mask, 8, stop_at_eos=False)
        theirs = tiny_lm.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
            pad_token_id=2, eos_token_id=None,
        )  # fmt: skip
    assert torch.equal(ours, theirs)


def test_batched_prompts_match_one_at_a_time(tiny_lm, sae):
    with steer(tiny_lm, sae, {3: 8.0, 9: 4.0}, positions=slice(1, None)):
        batched = tiny_lm.generate(PROMPTS, max_new_tokens=8, stop_at_eos=False)
        single = [tiny_lm.generate(p, max_new_tokens=8, stop_at_eos=False) for p in PROMPTS]
    assert batched == single


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tiny_lm, sae):
    kwargs = dict(max_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.95, seed=7)
    state = torch.random.get_rng_state()
    with steer(tiny_lm, sae, {3: 8.0}):
        a = tiny_lm.generate(PROMPTS, **kwargs, stop_at_eos=False)
        b = tiny_lm.generate(PROMPTS, **kwargs, stop_at_eos=False)
        c = tiny_lm.generate(PROMPTS, **{**kwargs, "seed": 8}, stop_at_eos=False)
    assert a == b and a != c
    assert torch.equal(torch.random.get_rng_state(), state)


def test_sample_next_filters():
    logits = torch.tensor([[0.0, 1.0, 5.0, 4.9]])
    assert sample_next(logits, False, 1.0, None, None).item() == 2
    torch.manual_seed(0)
    draws = {sample_next(logits, True, 1.0, 2, None).item() for _ in range(50)}
    assert draws == {2, 3}
    draws = {sample_next(logits, True, 1.0, None, 0.3).item() for _ in range(50)}
    assert draws == {2}


def test_generation_settings_are_checked(tiny_lm):
    for kwargs, message in [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(do_sample=True, temperature=0.0), "temperature"),
        (dict(do_sample=True, top_p=1.5), "top_p"),
    ]:
        with pytest.raises(ValueError, match=message):
            tiny_lm.generate("x", **kwargs)
    with pytest.raises(ValueError, match="prompts is empty"):
        tiny_lm.generate([])


def test_several_interventions_during_generation(tiny_lm, sae):
    other = SAE.create("relu", d_in=64, d_sae=64,
                       metadata={"model_name": tiny_lm.spec, "hook_name": "blocks.0.hook_mlp_out"})  # fmt: skip
    items = [Intervention(sae, {3: 8.0}), Intervention(other, [1, 2, 3], mode="ablate")]
    ids, mask = encode_prompts(tiny_lm, PROMPTS)
    with steer(tiny_lm, items):
        cached = generate_ids(tiny_lm, ids, mask, 8, stop_at_eos=False)
        full = generate_ids(tiny_lm, ids, mask, 8, use_cache=False, stop_at_eos=False)
    assert torch.equal(cached, full)
