"""Ground-truth recovery on synthetic data: the metric passes a trained SAE and fails a random one."""

from __future__ import annotations

import pytest
import torch

from saekit.evals.synthetic import (
    SyntheticActivations,
    SyntheticConfig,
    duplicate_fraction,
    max_cosines,
    recovery_metrics,
    train_on_synthetic,
)
from saekit.saes import SAE

CFG = SyntheticConfig(d_model=32, n_features=64, mean_active=3.0, seed=0)


def test_max_cosines_and_duplicates_by_hand():
    true = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    learned = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    assert max_cosines(true, learned).tolist() == pytest.approx([2**-0.5, 2**-0.5])
    rows = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]])
    assert duplicate_fraction(rows, torch.tensor([True, True, True])) == pytest.approx(1 / 3)
    assert duplicate_fraction(rows, torch.tensor([True, False, True])) == 0.0


def test_sampler_fires_features_at_their_probabilities_with_correlations():
    data = SyntheticActivations(CFG)
    assert torch.allclose(data.dictionary_FD.norm(dim=1), torch.ones(64))
    assert data.probs_F.sum().item() == pytest.approx(3.0, rel=1e-5)
    assert data.probs_F[0] > 10 * data.probs_F[-1]  # a wide spread of frequencies
    x, coeffs = data.sample(20_000, torch.Generator().manual_seed(0))
    freq = (coeffs > 0).double().mean(0)
    assert torch.allclose(freq, data.probs_F.double(), atol=0.015)
    assert torch.allclose(x, coeffs @ data.dictionary_FD, atol=0.2)
    fired = (coeffs[:, :8] > 0).double()
    corr = torch.corrcoef(fired.T)
    assert corr[~torch.eye(8, dtype=torch.bool)].abs().max() > 0.05  # correlated firings
    with pytest.raises(ValueError, match="correlation must be in"):
        SyntheticActivations(SyntheticConfig(correlation=1.0))


def test_topk_sae_recovers_the_dictionary_and_a_random_one_does_not():
    data = SyntheticActivations(CFG)
    torch.manual_seed(1)
    random_sae = SAE.create("topk", d_in=32, d_sae=128, k=4)
    chance = recovery_metrics(random_sae, data)
    torch.manual_seed(1)
    sae = train_on_synthetic(
        SAE.create("topk", d_in=32, d_sae=128, k=4), data, steps=400, batch_size=256
    )
    got = recovery_metrics(sae, data)
    assert got["fraction_recovered"] >= 0.8 and got["mean_max_cosine"] >= 0.93
    assert got["explained_variance"] > 0.8
    assert chance["fraction_recovered"] <= 0.05 and chance["mean_max_cosine"] < 0.6
    assert got["dead_fraction"] < 0.5 and got["duplicate_fraction"] < 0.1
