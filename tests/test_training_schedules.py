import math

import pytest

from saekit.training.schedules import lr_factor, warmup_factor


def test_constant_schedule_is_one_after_warmup():
    assert [lr_factor(s, 10, warmup_steps=4, schedule="constant") for s in range(6)] == [
        0.25, 0.5, 0.75, 1.0, 1.0, 1.0,
    ]


def test_linear_decay_over_last_fifth_ends_just_above_zero():
    # 10 steps, decay over the last 2: steps 0-7 at 1, then 2/3 and 1/3; the 0 would come
    # after the final step, so no step is wasted at lr 0.
    factors = [lr_factor(s, 10, schedule="linear", decay_fraction=0.2) for s in range(10)]
    assert factors == pytest.approx([1.0] * 8 + [2 / 3, 1 / 3])


def test_cosine_decay_midpoint_and_end_factor():
    # 4 decay steps over a 4-step run: progress 1/5 ... 4/5 (the end factor comes after).
    factors = [lr_factor(s, 4, schedule="cosine", decay_fraction=1.0, end_factor=0.1) for s in range(4)]
    expected = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)) for p in (0.2, 0.4, 0.6, 0.8)]
    assert factors == pytest.approx(expected)
    assert factors[-1] > 0.1


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        lr_factor(9, 10, schedule="step")


def test_sparsity_warmup():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
