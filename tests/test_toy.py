"""`saekit toy`: an SAE trained on a toy model of superposition recovers its true features;
an untrained SAE of the same shape (the negative control) does not."""

from __future__ import annotations

import json

import pytest
import torch

from saekit.toy import ToyConfig, ToyModel, random_sae, recovery, run

pytestmark = pytest.mark.slow
RECOVERED = 0.9  # fraction of represented features matched at cosine >= 0.9
CFG = ToyConfig()  # the defaults: 64 features in 16 dims, 1M activations (~20 s)


@pytest.fixture(scope="module")
def report():
    return run(CFG)


def test_sae_recovers_the_toy_features(report):
    sae = report["sae"]
    assert sae["represented_features"] >= 0.9 * CFG.n_features  # superposition: 64 in 16 dims
    assert sae["fraction_recovered"] >= RECOVERED and sae["mmcs"] >= 0.95


def test_random_sae_is_the_negative_control(report):
    control = report["random_sae"]
    assert control["fraction_recovered"] < 0.1 and control["mmcs"] < 0.8
    assert control["mmcs"] < report["sae"]["mmcs"] - 0.2


def test_recovery_of_exact_directions():
    """The score itself: an SAE whose decoder rows are the true directions scores 1."""
    model = ToyModel(8, 3, torch.Generator().manual_seed(0))
    sae = random_sae(ToyConfig(n_features=8, d_hidden=3, d_sae=8))
    with torch.no_grad():
        sae.W_dec.copy_(model.W.T * 2)
    r = recovery(model, sae, min_norm=0.0)
    assert r["mmcs"] == pytest.approx(1.0) and r["fraction_recovered"] == 1.0
    assert r["best_latent"] == list(range(8))


def test_cli_writes_report_and_plot(tmp_path, capsys):
    from saekit.cli import main

    argv = ["toy", "--n-features", "12", "--d-hidden", "4", "--toy-steps", "300",
            "--sae-tokens", "40k", "--d-sae", "24", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "MMCS" in out and "random_sae" in out
    report = json.loads((tmp_path / "recovery.json").read_text())
    assert report["config"]["n_features"] == 12 and len(report["sae"]["best_cosine"]) == 12
    assert (tmp_path / "feature_geometry.png").stat().st_size > 10_000
    assert (tmp_path / "sae" / "cfg.json").exists()
