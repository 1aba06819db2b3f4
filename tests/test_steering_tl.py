"""Steering and generation on a TransformerLens model agree with the same weights under HF.

Skipped unless TransformerLens with `HookedTransformer` (2.x / 3.x) is installed.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformer_lens.HookedTransformer")

from saekit import SAE  # noqa: E402
from saekit.models.generate import generate_ids  # noqa: E402
from saekit.steering import steer  # noqa: E402
from test_hooks_tl import pair  # noqa: E402, F401  (the tiny HF GPT-2 + TL twin fixture)

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def sae():
    torch.manual_seed(0)
    sae = SAE.create("topk", d_in=32, d_sae=64, k=6, metadata={"hook_name": HOOK})
    with torch.no_grad():
        sae.W_dec.mul_(4.0)
    return sae


def test_steered_logits_agree_across_backends(pair, sae):  # noqa: F811
    hf_lm, tl_lm = pair
    ids = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(0))
    for kwargs in [dict(features={3: 5.0}), dict(features={3: 2.0, 7: 0.0}, mode="clamp"),
                   dict(features={3: 0.0}, positions=[-1])]:  # fmt: skip
        with steer(hf_lm, sae, **kwargs):
            hf = hf_lm.logits(ids)
        with steer(tl_lm, sae, **kwargs):
            tl = tl_lm.logits(ids)
        torch.testing.assert_close(hf, tl, atol=1e-4, rtol=1e-4)
    with steer(tl_lm, sae, {3: 0.0}):
        assert torch.equal(tl_lm.logits(ids), tl_lm.logits(ids))


@pytest.mark.parametrize("positions", ["all", "generated", slice(-2, None)])
def test_tl_generation_with_cache_equals_without_and_equals_hf(pair, sae, positions):  # noqa: F811
    hf_lm, tl_lm = pair
    ids = torch.randint(0, 101, (2, 5), generator=torch.Generator().manual_seed(1))
    with steer(tl_lm, sae, {3: 5.0, 9: -3.0}, positions=positions):
        cached = generate_ids(tl_lm, ids, None, 8, stop_at_eos=False)
        full = generate_ids(tl_lm, ids, None, 8, use_cache=False, stop_at_eos=False)
    with steer(hf_lm, sae, {3: 5.0, 9: -3.0}, positions=positions):
        hf = generate_ids(hf_lm, ids, None, 8, stop_at_eos=False)
    assert torch.equal(cached, full)
    assert torch.equal(cached, hf)


def test_tl_ragged_batch_and_sampling(pair, sae):  # noqa: F811
    _, tl_lm = pair
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with steer(tl_lm, sae, {3: 5.0}):
        both = generate_ids(tl_lm, ids, mask, 6, stop_at_eos=False)
        first = generate_ids(tl_lm, ids[:1, 2:], None, 6, stop_at_eos=False)
        a = generate_ids(tl_lm, ids, mask, 6, do_sample=True, seed=3, stop_at_eos=False)
        b = generate_ids(tl_lm, ids, mask, 6, do_sample=True, seed=3, stop_at_eos=False)
    assert torch.equal(both[0, 2:], first[0])
    assert torch.equal(a, b)


class _Recorder:
    """A streamer that keeps what it is told."""

    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []
        self.ended = False

    def put(self, ids: torch.Tensor) -> None:
        self.calls.append(ids.reshape(-1).clone())

    def end(self) -> None:
        self.ended = True


def test_streamer_is_told_the_prompt_then_each_new_token_on_both_backends(pair, sae):  # noqa: F811
    ids = torch.tensor([[4, 8, 15, 16, 23]])
    for lm in pair:
        rec = _Recorder()
        with steer(lm, sae, {3: 5.0}):
            out = generate_ids(lm, ids, None, 6, stop_at_eos=False, streamer=rec)
        assert torch.equal(rec.calls[0], ids[0])  # the prompt first
        streamed = torch.cat(rec.calls[1:])
        assert torch.equal(streamed, out[0, ids.shape[1] :]) and rec.ended
    with pytest.raises(ValueError, match="one prompt at a time"):
        generate_ids(pair[0], ids.repeat(2, 1), None, 2, streamer=_Recorder())
