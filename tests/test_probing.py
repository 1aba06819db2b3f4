"""Sparse probing: mean pooling with masks, SAEBench's balanced sampling, k-sparse selection,
and the probe's accuracy against an independent float64 logistic regression."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saekit.evals.pooling import PooledCache, keep_mask, mean_pool, pooled_activations
from saekit.evals.probing import (
    balanced_indices,
    probe_class,
    probe_dataset,
    top_k_mean_diff,
)


def test_mean_pool_averages_only_kept_positions():
    acts_BTX = torch.tensor(
        [[[1.0, 10.0], [3.0, 30.0], [100.0, 100.0]], [[2.0, 4.0], [9.0, 9.0], [9.0, 9.0]]]
    )
    keep_BT = torch.tensor([[True, True, False], [True, False, False]])
    pooled = mean_pool(acts_BTX, keep_BT)
    assert pooled.tolist() == [[2.0, 20.0], [2.0, 4.0]]
    # a row with nothing kept pools to zeros instead of NaN
    assert mean_pool(acts_BTX[:1], torch.zeros(1, 3, dtype=torch.bool)).tolist() == [[0.0, 0.0]]


def test_keep_mask_drops_padding_and_special_tokens():
    ids = torch.tensor([[1, 5, 6, 0], [1, 7, 2, 2]])
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    keep = keep_mask(ids, attention, special_ids={0, 1, 2})
    assert keep.tolist() == [[False, True, True, False], [False, True, False, False]]


def test_balanced_indices_follow_saebench_sampling():
    labels = ["a"] * 7 + ["b"] * 10 + ["c"] * 10 + ["d"] * 10
    idx, y = balanced_indices(labels, "a", np.random.default_rng(0))
    assert sorted(idx[y == 1].tolist()) == list(range(7))  # every positive
    negatives = [labels[i] for i in idx[y == 0]]
    assert len(negatives) == 7 and "a" not in negatives
    # each other class contributes ceil(7 / 3) = 3 before the final draw of 7
    assert all(negatives.count(c) <= 3 for c in "bcd")
    assert sum(negatives.count(c) >= 1 for c in "bcd") >= 2
    again, _ = balanced_indices(labels, "a", np.random.default_rng(0))
    assert again.tolist() == idx.tolist()
    with pytest.raises(ValueError, match="only 2 negatives"):
        balanced_indices(["a"] * 5 + ["b"] * 2, "a", np.random.default_rng(0))


def test_top_k_mean_diff_picks_largest_absolute_differences():
    X = torch.tensor(
        [[1.0, 0.0, 5.0, 2.0], [3.0, 0.0, 5.0, 2.0], [0.0, 1.0, 0.0, 2.0], [0.0, 1.0, 1.0, 2.0]]
    )
    y = torch.tensor([1, 1, 0, 0])
    # |mean diff| = [2, 1, 4.5, 0]
    assert top_k_mean_diff(X, y, 1).tolist() == [2]
    assert top_k_mean_diff(X, y, 3).tolist() == [2, 0, 1]


def _newton_logistic(X: np.ndarray, y01: np.ndarray, C: float = 1.0) -> tuple[np.ndarray, float]:
    """L2 logistic regression (unpenalised intercept) by Newton's method, in float64."""
    X1 = np.hstack([X.astype(np.float64), np.ones((len(X), 1))])
    w = np.zeros(X1.shape[1])
    reg = np.eye(X1.shape[1]) / C
    reg[-1, -1] = 0.0
    for _ in range(100):
        p = 1 / (1 + np.exp(-X1 @ w))
        grad = X1.T @ (p - y01) + reg @ w
        hess = X1.T @ (X1 * (p * (1 - p))[:, None]) + reg
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-12:
            break
    return w[:-1], w[-1]


def test_probe_class_matches_an_independent_float64_implementation():
    rng = np.random.default_rng(3)
    n, d = 120, 12
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, d))
    X[:, 4] += 2.5 * y  # informative columns, plus noise
    X[:, 9] -= 2.0 * y
    X_t = torch.from_numpy(X).float()
    train = (np.arange(80), y[:80])
    test = (np.arange(80, n), y[80:])
    got = probe_class(X_t, train, test, [1, 2], "sae")

    def reference(cols: list[int] | None) -> float:
        Xtr, Xte = X[:80].astype(np.float32), X[80:].astype(np.float32)
        if cols is not None:
            Xtr, Xte = Xtr[:, cols], Xte[:, cols]
        w, b = _newton_logistic(Xtr, y[:80])
        return float((((Xte @ w + b) > 0).astype(int) == y[80:]).mean())

    Xtr32 = X[:80].astype(np.float32).astype(np.float64)
    diff = np.abs(Xtr32[y[:80] == 1].mean(0) - Xtr32[y[:80] == 0].mean(0))
    order = np.argsort(-diff, kind="stable")
    assert set(order[:2]) == {4, 9}
    assert got["sae_test_accuracy"] == pytest.approx(reference(None))
    assert got["sae_top_1_test_accuracy"] == pytest.approx(reference(order[:1].tolist()))
    assert got["sae_top_2_test_accuracy"] == pytest.approx(reference(order[:2].tolist()))
    assert got["sae_top_2_test_accuracy"] > 0.8


def test_probe_dataset_shares_samples_and_averages_over_classes():
    from saekit.evals.labelled import split_by_class

    rows = [(f"{c} text {i}", c) for c in "abc" for i in range(30)]
    data = split_by_class("toy", rows, 20, 10, seed=1)
    texts, _, labels = data.texts()
    gen = torch.Generator().manual_seed(0)
    resid = torch.randn(len(texts), 6, generator=gen)
    for i, label in enumerate(labels):
        resid[i, "abc".index(label)] += 3.0  # class c is readable in dimension index(c)
    feats = {"same": resid.clone(), "noise": torch.randn(len(texts), 6, generator=gen)}
    means, per_class = probe_dataset(data, resid, feats, k_values=[1], seed=0)
    assert means["same"]["sae_top_1_test_accuracy"] == means["same"]["llm_top_1_test_accuracy"]
    assert means["same"]["llm_test_accuracy"] > 0.9
    assert means["noise"]["sae_top_1_test_accuracy"] < 0.8
    per = per_class["same"]["llm_top_1_test_accuracy"]
    assert set(per) == {"a", "b", "c"}
    assert means["same"]["llm_top_1_test_accuracy"] == pytest.approx(sum(per.values()) / 3)


def test_pooled_activations_equal_per_text_float64_means(tiny_lm, tmp_path):
    from saekit.saes import SAE

    hook = "blocks.2.hook_resid_pre"
    torch.manual_seed(0)
    saes = {
        "a": SAE.create("topk", d_in=64, d_sae=128, k=8),
        "b": SAE.create("relu", d_in=64, d_sae=96),
    }
    texts = ["The quick brown fox.", "def f(x):\n    return x", "A much longer text " * 12, "Hi"]
    cache = PooledCache(tmp_path)
    resid, feats = pooled_activations(
        tiny_lm, hook, texts, saes, context=32, batch_rows=3, cache=cache
    )
    tok, bos, special = tiny_lm.tokenizer, tiny_lm.bos_token_id, tiny_lm.special_token_ids
    for i, text in enumerate(texts):
        ids = ([bos] + tok(text, add_special_tokens=False)["input_ids"])[:32]
        acts = tiny_lm.run_to_hooks(torch.tensor([ids]), [hook])[hook][0].double()
        kept = torch.tensor([t not in special for t in ids])
        assert torch.allclose(resid[i].double(), acts[kept].mean(0), atol=1e-5)
        for name, sae in saes.items():
            with torch.no_grad():
                want = sae.encode(acts[kept].float()).double().mean(0)
            assert torch.allclose(feats[name][i].double(), want, atol=1e-5)
    # a second call reads the cache and runs no forward
    tiny_lm_forward = tiny_lm.run_to_hooks
    try:
        tiny_lm.run_to_hooks = lambda *a, **k: (_ for _ in ()).throw(AssertionError("forward"))
        again, feats2 = pooled_activations(tiny_lm, hook, texts, saes, context=32, cache=cache)
    finally:
        tiny_lm.run_to_hooks = tiny_lm_forward
    assert torch.equal(again, resid) and torch.equal(feats2["b"], feats["b"])
    assert math.isfinite(float(resid.sum()))


def test_accuracy_se_by_hand():
    from saekit.evals.probing import accuracy_se

    # one dataset, two classes at 0.5 and 0.9 on 100 test examples each:
    # var of the mean = (0.25 + 0.09) / 100 / 4 = 0.00085
    assert accuracy_se([{"a": 0.5, "b": 0.9}], 100) == pytest.approx(0.00085**0.5)
    # two datasets, the second with one class at 0.5 (var 0.25 / 100): sqrt(sum of vars) / 2
    assert accuracy_se([{"a": 0.5, "b": 0.9}, {"c": 0.5}], 100) == pytest.approx(
        (0.00085 + 0.0025) ** 0.5 / 2
    )
    assert accuracy_se([{"a": 1.0}], 40) == 0.0
