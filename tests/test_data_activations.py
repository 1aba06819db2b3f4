"""ActivationSource: kept positions only, the same rows for every hook, exact resume."""

from __future__ import annotations

import itertools

import torch

from saekit.data import ActivationSource, TokenWindows, iter_documents, iter_token_batches

HOOKS = ["blocks.1.hook_resid_pre", "blocks.3.hook_resid_pre"]


def _windows(lm, context=16):
    return TokenWindows(iter_documents("builtin:python-docs"), lm.tokenizer, context)


def test_rows_are_the_kept_positions_of_a_plain_forward(tiny_lm):
    source = ActivationSource(tiny_lm, HOOKS, _windows(tiny_lm), rows_per_forward=4)
    assert source.dims == {h: 64 for h in HOOKS}
    got = list(itertools.islice(source, 3))
    batches = list(itertools.islice(iter_token_batches(_windows(tiny_lm), 4), 3))
    for acts, (ids_BT, keep_BT) in zip(got, batches, strict=True):
        assert not keep_BT[:, 0].any() and keep_BT.sum() < keep_BT.numel()
        with torch.no_grad():
            hidden = tiny_lm.model(ids_BT, output_hidden_states=True).hidden_states
        for h, layer in zip(HOOKS, [1, 3], strict=True):
            assert acts[h].dtype == torch.float32
            assert acts[h].shape == (int(keep_BT.sum()), 64)
            torch.testing.assert_close(acts[h], hidden[layer][keep_BT])


def test_resume_continues_with_the_next_forward(tiny_lm):
    full = list(itertools.islice(ActivationSource(tiny_lm, HOOKS, _windows(tiny_lm), 3), 5))
    first = ActivationSource(tiny_lm, HOOKS, _windows(tiny_lm), 3)
    list(itertools.islice(first, 2))
    resumed = ActivationSource(tiny_lm, HOOKS, _windows(tiny_lm), 3)
    resumed.load_state_dict(first.state_dict())
    for got, want in zip(itertools.islice(resumed, 3), full[2:], strict=True):
        for h in HOOKS:
            torch.testing.assert_close(got[h], want[h])
