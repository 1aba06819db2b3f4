"""The evaluation spread over ranks (`saekit.evals.sharded`), simulated in one process: the
merged parts equal the evaluation on all windows."""

from __future__ import annotations

import pytest

from saekit.evals import EvalTarget, evaluate_saes
from saekit.evals.evaluate import METRIC_KEYS
from saekit.evals.sharded import evaluate_part, merge_parts
from test_spliced import HOOK, make_sae, make_tokens


@pytest.mark.parametrize("world", [2, 3])
def test_merged_parts_equal_the_whole_evaluation(tiny_lm, world):
    batches = [make_tokens(len(tiny_lm.tokenizer), rows=16, seed=s) for s in (1, 2, 3, 4)]
    targets = {"a": EvalTarget(make_sae(seed=2), HOOK, HOOK),
               "b": EvalTarget(make_sae(seed=3), HOOK, HOOK)}  # fmt: skip
    ce_tokens = 300  # the losses on the first two of four batches of 16 windows
    whole = evaluate_saes(targets, tiny_lm, batches, ce_tokens=ce_tokens)
    parts = [evaluate_part(targets, tiny_lm, batches, rank, world, ce_tokens=ce_tokens)
             for rank in range(world)]  # fmt: skip
    assert sum(len(p.losses) for p in parts) == 2  # one rank of three holds no loss window
    merged = merge_parts(parts[::-1])  # any order
    for name in targets:
        assert merged[name]["ce_tokens"] < merged[name]["tokens"] == whole[name]["tokens"]
        for key in METRIC_KEYS:
            assert merged[name][key] == pytest.approx(whole[name][key], rel=1e-5, abs=1e-7), key


def test_a_rank_outside_the_world_is_refused(tiny_lm):
    with pytest.raises(ValueError, match="rank must be in"):
        evaluate_part({}, tiny_lm, [], 2, 2)
