"""Each metric against a hand-worked example or an independent plain-torch computation."""

from __future__ import annotations

import math

import pytest
import torch

from saekit.evals import metrics as M

# Two tokens, two dimensions, worked out by hand.
X = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
X_HAT = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
FEATS = torch.tensor([[0.0, 2.0, 0.0, 0.0], [1.0, 3.0, 0.0, 0.0]])


def test_hand_worked_values():
    assert M.l0(FEATS).item() == pytest.approx(1.5)  # 1 and 2 active
    assert M.mse(X, X_HAT).item() == pytest.approx((0 + 1 + 0 + 16) / 4)
    # mean over tokens (2, 2); deviations (-1,-2), (1, 2) -> SST = 1+4+1+4 = 10; SSE = 17
    assert M.fvu(X, X_HAT).item() == pytest.approx(17 / 10)
    assert M.explained_variance(X, X_HAT).item() == pytest.approx(1 - 17 / 10)
    # cos((1,1),(1,0)) = 1/sqrt2; cos((3,0),(3,4)) = 9/(3*5) = 0.6
    assert M.cosine_similarity(X, X_HAT).item() == pytest.approx((1 / math.sqrt(2) + 0.6) / 2)
    # ||x_hat||/||x||: sqrt2/1 and 3/5
    assert M.l2_norm_ratio(X, X_HAT).item() == pytest.approx((math.sqrt(2) + 0.6) / 2)
    counts = M.firing_counts(FEATS)
    assert counts.tolist() == [1, 2, 0, 0]
    density = M.feature_density(counts, 2)
    assert density.tolist() == [0.5, 1.0, 0.0, 0.0]
    assert M.log10_feature_density(density).tolist() == pytest.approx(
        [math.log10(0.5 + 1e-10), math.log10(1 + 1e-10), -10.0, -10.0]
    )
    assert M.dead_fraction(density) == 0.5
    assert M.dense_fraction(density) == 0.5
    assert M.dense_fraction(torch.tensor([0.1, 0.11, 0.0, 1.0])) == 0.5  # strictly above 0.1


def test_random_against_plain_torch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g) * 3 + 5
    x_hat = x + 0.5 * torch.randn(64, 16, generator=g)
    feats = torch.relu(torch.randn(64, 32, generator=g) - 1)

    assert M.l0(feats).item() == pytest.approx(feats.gt(0).float().sum(1).mean().item(), rel=1e-6)
    assert M.mse(x, x_hat).item() == pytest.approx(
        torch.nn.functional.mse_loss(x_hat, x).item(), rel=1e-5
    )
    var_total = x.var(dim=0, unbiased=False).sum() * x.shape[0]
    fvu = ((x - x_hat) ** 2).sum() / var_total
    assert M.fvu(x, x_hat).item() == pytest.approx(fvu.item(), rel=1e-5)
    cos = (x * x_hat).sum(1) / (x.norm(dim=1) * x_hat.norm(dim=1))
    assert M.cosine_similarity(x, x_hat).item() == pytest.approx(cos.mean().item(), rel=1e-5)
    ratio = (x_hat.norm(dim=1) / x.norm(dim=1)).mean()
    assert M.l2_norm_ratio(x, x_hat).item() == pytest.approx(ratio.item(), rel=1e-5)


def test_density_histogram():
    log10_density = torch.tensor([-12.0, -10.0, -5.5, -0.5, 0.0])
    counts, edges = M.density_histogram(log10_density, bins=10)
    assert edges[0].item() == -10 and edges[-1].item() == 0 and len(edges) == 11
    assert counts.sum().item() == 5
    assert counts[0].item() == 2  # -12 clamped into the first bin with -10
    assert counts[4].item() == 1  # -5.5 in [-6, -5)
    assert counts[9].item() == 2  # -0.5 and 0 in [-1, 0]


def test_running_stats_equal_concatenated_batches():
    g = torch.Generator().manual_seed(1)
    # a large mean makes a naive sum-of-squares formula lose precision
    xs = [torch.randn(n, 8, generator=g) + 1000 for n in (5, 17, 1, 30)]
    x_hats = [x + 0.1 * torch.randn(x.shape, generator=g) for x in xs]
    feats = [torch.relu(torch.randn(x.shape[0], 12, generator=g) - 1.5) for x in xs]

    stats = M.RunningStats()
    for x, x_hat, f in zip(xs, x_hats, feats, strict=True):
        stats.update(x, x_hat, f)
    got = stats.compute()

    x, x_hat, f = (torch.cat(t).double() for t in (xs, x_hats, feats))
    sse = ((x - x_hat) ** 2).sum()
    sst = ((x - x.mean(0)) ** 2).sum()
    density = (f > 0).double().mean(0)
    assert got["tokens"] == 53
    assert got["l0"] == pytest.approx((f > 0).sum(1).double().mean().item())
    assert got["mse"] == pytest.approx(((x - x_hat) ** 2).mean().item())
    assert got["fvu"] == pytest.approx((sse / sst).item(), rel=1e-9)
    assert got["explained_variance"] == pytest.approx(1 - (sse / sst).item(), rel=1e-9)
    cos = (x * x_hat).sum(1) / (x.norm(dim=1) * x_hat.norm(dim=1))
    assert got["cos_sim"] == pytest.approx(cos.mean().item())
    assert got["l2_ratio"] == pytest.approx((x_hat.norm(dim=1) / x.norm(dim=1)).mean().item())
    assert got["dead_fraction"] == pytest.approx((density == 0).double().mean().item())
    assert got["dense_fraction"] == pytest.approx((density > 0.1).double().mean().item())
    assert torch.allclose(stats.density_F(), density)
    assert torch.allclose(stats.mean_D, x.mean(0))


def test_running_stats_errors():
    stats = M.RunningStats()
    with pytest.raises(ValueError, match="no tokens"):
        stats.compute()
    with pytest.raises(ValueError, match="mismatched shapes"):
        stats.update(torch.zeros(3, 4), torch.zeros(3, 5), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="at least one token"):
        M.feature_density(torch.zeros(3), 0)
