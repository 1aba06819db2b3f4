"""saekit.steer on a tiny random Llama: no-op edits change nothing, every mode matches float64
arithmetic on W_dec, positions, several SAEs and hooks, transcoders, and bad input."""

from __future__ import annotations

import pytest
import torch

from saekit import SAE
from saekit.models.generate import encode_prompts
from saekit.steering import Intervention, steer

HOOK = "blocks.2.hook_resid_pre"
PROMPTS = ["The quick brown fox jumps over", "Lists are"]


def make_sae(lm, arch="relu", hook=HOOK, d_sae=128, seed=0, **settings) -> SAE:
    torch.manual_seed(seed)
    sae = SAE.create(
        arch, d_in=lm.d_model, d_sae=d_sae, metadata={"model_name": lm.spec, "hook_name": hook},
        **settings,
    )  # fmt: skip
    with torch.no_grad():  # an encoder that leaves about half the features active
        sae.b_enc.normal_(0, 0.1) if hasattr(sae, "b_enc") else None
        sae.W_dec.mul_(torch.rand(d_sae, 1) + 0.5)  # rows of different norms
    return sae


@pytest.fixture(scope="module")
def batch(tiny_lm):
    return encode_prompts(tiny_lm, PROMPTS)


@pytest.fixture(scope="module")
def sae(tiny_lm):
    return make_sae(tiny_lm)


def acts_and_feats(lm, sae, ids, mask, hook=HOOK):
    """Clean activation at the hook and the SAE's features of it."""
    x_BTD = lm.run_to_hooks(ids, [hook], attention_mask=mask)[hook]
    with torch.no_grad():
        return x_BTD, sae.encode(x_BTD)


def steered_act(lm, ids, mask, *steer_args, hook=HOOK, **steer_kwargs):
    """The activation at `hook` as the next layer sees it, inside `steer(...)`."""
    with steer(lm, *steer_args, **steer_kwargs):
        return lm.run_to_hooks(ids, [hook], attention_mask=mask)[hook]


def test_interventions_that_change_nothing_leave_the_logits_unchanged(tiny_lm, sae, batch):
    ids, mask = batch
    clean = tiny_lm.logits(ids, mask)
    _, f_BTF = acts_and_feats(tiny_lm, sae, ids, mask)
    active_F = (f_BTF > 0).any(0).any(0)
    inactive = (~active_F).nonzero().squeeze(1).tolist()[:5]
    active = active_F.nonzero().squeeze(1).tolist()[:5]
    assert inactive and active
    cases = [
        dict(features={f: 0.0 for f in active}, mode="add"),
        dict(features={f: 1.0 for f in active}, mode="scale"),
        dict(features=inactive, mode="ablate"),
    ]
    for case in cases:
        with steer(tiny_lm, sae, **case):
            assert torch.equal(tiny_lm.logits(ids, mask), clean), case
    # clamp each active feature to its own current value, one position at a time
    assert mask[0].all()  # row 0 is the longest prompt: position t is column t
    for t in range(ids.shape[1]):
        values = {f: float(f_BTF[0, t, f]) for f in active}
        with steer(tiny_lm, sae, values, mode="clamp", positions=t):
            out = tiny_lm.logits(ids[:1], mask[:1])
        torch.testing.assert_close(out, clean[:1], rtol=0, atol=1e-5)


def test_keep_error_false_with_no_change_equals_the_spliced_sae(tiny_lm, sae, batch):
    ids, mask = batch
    with tiny_lm.splice(HOOK, lambda x: sae(x).sae_out):
        spliced = tiny_lm.logits(ids, mask)
    with steer(tiny_lm, sae, {3: 1.0}, mode="scale", keep_error=False):
        torch.testing.assert_close(tiny_lm.logits(ids, mask), spliced, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "mode, units",
    [("add", "raw"), ("add", "act"), ("add", "norm"), ("clamp", "raw"), ("clamp", "act"),
     ("ablate", "raw"), ("scale", "raw")],
)  # fmt: skip
def test_each_mode_changes_the_residual_by_the_decoder_rows(tiny_lm, sae, batch, mode, units):
    ids, mask = batch
    x_BTD, f_BTF = acts_and_feats(tiny_lm, sae, ids, mask)
    feats = {5: 2.5, 17: -1.5, 40: 0.75}
    typical = torch.rand(sae.cfg.d_sae) + 0.5
    got = steered_act(tiny_lm, ids, mask, sae, feats, mode=mode, units=units, typical_acts=typical)
    x = x_BTD.double()
    W = sae.W_dec.detach().double()
    expected = x.clone()
    for f, v in feats.items():
        act = f_BTF[..., f].double().unsqueeze(-1)
        v = v * float(typical[f]) if units == "act" else v
        if mode == "add" and units == "norm":
            expected += v * x.norm(dim=-1, keepdim=True) * W[f] / W[f].norm()
        elif mode == "add":
            expected += v * W[f]
        elif mode == "clamp":
            expected += (v - act) * W[f]
        elif mode == "ablate":
            expected -= act * W[f]
        else:
            expected += (v - 1) * act * W[f]
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize(
    "positions, expected",
    [
        ("all", lambda start, P: set(range(P))),
        ("prompt", lambda start, P: set(range(P))),
        ("generated", lambda start, P: set()),
        (0, lambda start, P: {start}),
        (-1, lambda start, P: {P - 1}),
        ([1, -2], lambda start, P: {start + 1, P - 2}),
        (slice(1, 3), lambda start, P: {start + 1, start + 2}),
        (slice(-2, None), lambda start, P: {P - 2, P - 1}),
    ],
)
def test_positions_select_columns_from_each_rows_first_real_token(
    tiny_lm, sae, batch, positions, expected
):
    ids, mask = batch
    x_BTD, _ = acts_and_feats(tiny_lm, sae, ids, mask)
    got = steered_act(tiny_lm, ids, mask, sae, {3: 4.0}, positions=positions)
    changed_BT = (got != x_BTD).any(-1)
    P = ids.shape[1]
    for b in range(ids.shape[0]):
        start = int((mask[b] == 0).sum())
        assert set(changed_BT[b].nonzero().squeeze(1).tolist()) == expected(start, P), b


def test_several_saes_and_hooks_apply_in_order(tiny_lm, sae, batch):
    ids, mask = batch
    other = make_sae(tiny_lm, "topk", hook="blocks.1.hook_resid_post", seed=1, k=8)
    items = [
        Intervention(sae, {3: 2.0, 9: -1.0}, mode="add"),
        Intervention(other, {4: 0.0, 11: 3.0}, mode="clamp", positions="prompt"),
        Intervention(sae, [5, 6], mode="ablate"),  # same hook: sees the first edit
    ]
    with steer(tiny_lm, items) as steering:
        together = tiny_lm.logits(ids, mask)
        assert [d["hook"] for d in steering.describe()] == [HOOK, "blocks.1.hook_resid_post", HOOK]
    with steer(tiny_lm, items[0]), steer(tiny_lm, items[1]), steer(tiny_lm, items[2]):
        nested = tiny_lm.logits(ids, mask)
    assert torch.equal(together, nested)
    assert not torch.equal(together, tiny_lm.logits(ids, mask))


def test_a_transcoder_reads_one_hook_and_edits_the_other(tiny_lm, batch):
    ids, mask = batch
    hook_in, hook_out = "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"
    torch.manual_seed(2)
    tc = SAE.create(
        "relu", d_in=64, d_sae=96, d_out=64, apply_b_dec_to_input=False,
        metadata={"model_name": tiny_lm.spec, "hook_name": hook_in, "hook_name_out": hook_out},
    )  # fmt: skip
    assert tc.cfg.is_transcoder
    clean = tiny_lm.run_to_hooks(ids, [hook_in, hook_out], attention_mask=mask)
    f_BTF = tc.encode(clean[hook_in])
    f = int(f_BTF.sum((0, 1)).argmax())
    got = steered_act(tiny_lm, ids, mask, tc, {f: 2.0}, mode="clamp", hook=hook_out)
    expected = (
        clean[hook_out].double() + (2.0 - f_BTF[..., f : f + 1].double()) * tc.W_dec[f].double()
    )
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-5)
    with steer(tiny_lm, tc, {f: 1.0}, mode="scale"):
        assert torch.equal(tiny_lm.logits(ids, mask), tiny_lm.logits(ids, mask))


def test_bad_input_names_the_setting(tiny_lm, sae):
    cases = [
        (dict(features={128: 1.0}), "out of range"),
        (dict(features={-1: 1.0}), "out of range"),
        (dict(features={3: float("nan")}), "finite"),
        (dict(features={3: float("inf")}), "finite"),
        (dict(features={3: 1.0}, mode="boost"), "mode='boost'"),
        (dict(features={3: 1.0}, units="sigma"), "units='sigma'"),
        (dict(features={3: 1.0}, units="act"), "typical_acts"),
        (dict(features={3: 1.0}, mode="scale", units="norm"), "units='norm'"),
        (dict(features={3: 1.0}, positions="middle"), "positions='middle'"),
        (dict(features={3: 1.0}, positions=slice(0, 4, 2)), "step"),
        (dict(features=[3, 4], mode="add"), "needs a value per feature"),
        (dict(features={3: 1.0}, hook="blocks.9.hook_resid_pre"), "layer 9 out of range"),
        (dict(features={}), "empty"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            with steer(tiny_lm, sae, **kwargs):
                pass


def test_an_sae_that_does_not_fit_the_model(tiny_lm):
    narrow = SAE.create("relu", d_in=32, d_sae=64, metadata={"hook_name": HOOK})
    with pytest.raises(ValueError, match="d_in is 32 but .* has width 64 at blocks.2"):
        with steer(tiny_lm, narrow, {1: 1.0}):
            pass
    nohook = SAE.create("relu", d_in=64, d_sae=64)
    with pytest.raises(ValueError, match="metadata.hook_name"):
        with steer(tiny_lm, nohook, {1: 1.0}):
            pass


def test_another_model_than_the_saes_is_a_warning_naming_both(tiny_lm):
    sae = SAE.create("relu", d_in=64, d_sae=64, metadata={"hook_name": HOOK, "model_name": "gpt2"})
    with pytest.warns(UserWarning, match=f"'gpt2'.*{tiny_lm.spec}"):
        with steer(tiny_lm, sae, {1: 1.0}):
            pass


def test_hooks_are_removed_on_exit_and_on_error(tiny_lm, sae, batch):
    ids, mask = batch
    clean = tiny_lm.logits(ids, mask)
    with pytest.raises(RuntimeError, match="inside"):
        with steer(tiny_lm, sae, {3: 10.0}):
            raise RuntimeError("inside")
    assert torch.equal(tiny_lm.logits(ids, mask), clean)
    assert not tiny_lm.model._forward_pre_hooks
