"""`saekit dashboard` and `saekit logit-lens` end to end on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from saekit.cli import main


@pytest.fixture(scope="module")
def sae_folder(tiny_model_dir, tmp_path_factory):
    from saekit.saes import SAE

    torch.manual_seed(0)
    meta = {
        "model_name": str(tiny_model_dir),
        "hook_name": "blocks.1.hook_resid_post",
        "dataset_path": "builtin:python-docs",
        "context_size": 24,
    }
    sae = SAE.create("relu", d_in=64, d_sae=16, metadata=meta)
    folder = tmp_path_factory.mktemp("sae")
    sae.save(folder)
    return folder


def test_dashboard_cli(sae_folder, tmp_path, capsys):
    out = tmp_path / "dash"
    argv = [
        "dashboard",
        str(sae_folder),
        "--features",
        "0:3,9",
        "--tokens",
        "0.2k",
        "--out",
        str(out),
        "--forward-rows",
        "4",
        "--top-k",
        "5",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "4 features" in capsys.readouterr().out
    summary = json.loads((out / "features.json").read_text())
    assert [s["feature"] for s in summary] == [0, 1, 2, 9]
    # 200 tokens asked, whole batches of 4 x 23 kept tokens: stops after 3 batches (276)
    assert all(0 <= s["fire_count"] <= 276 for s in summary)
    assert "276 tokens" in (out / "index.html").read_text().replace(",", "")


def test_logit_lens_cli_json(sae_folder, tiny_lm, capsys):
    from saekit.analysis.logit_lens import feature_logit_effects
    from saekit.saes import SAE

    assert main(["logit-lens", str(sae_folder), "--feature", "3", "--k", "5", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["features"][0]
    want = feature_logit_effects(SAE.load(sae_folder), tiny_lm, 3, k=5)
    assert [row[0] for row in got["positive"]] == [i for i, *_ in want.positive]
    assert [row[0] for row in got["negative"]] == [i for i, *_ in want.negative]


def test_logit_lens_cli_token_sets_and_errors(sae_folder, capsys):
    assert main(["logit-lens", str(sae_folder), "--token-sets", "--k", "2"]) == 0
    assert "digits:" in capsys.readouterr().out
    assert main(["logit-lens", str(sae_folder), "--feature", "16"]) == 2
    assert "out of range [0, 16)" in capsys.readouterr().err
