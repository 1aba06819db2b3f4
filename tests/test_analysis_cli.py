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


def test_dashboard_cli_excludes_positions_after_special_tokens(sae_folder, tmp_path, capsys):
    from saekit.analysis.special_positions import after_special_mask
    from saekit.data.provenance import Provenance, token_batches
    from saekit.models import load_model
    from saekit.saes import SAE

    base = ["dashboard", str(sae_folder), "--features", "0:16", "--tokens", "0.2k",
            "--forward-rows", "4", "--no-progress"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "ex"), "--exclude-after-special", "1"]) == 0
    kept = json.loads((tmp_path / "ex" / "features.json").read_text())
    assert all(s["top_after_special"] in (0.0, None) for s in kept)
    assert "1 position(s) after special tokens excluded" in (tmp_path / "ex" / "index.html").read_text()
    # Fire counts recomputed by hand on the same windows with the positions masked out.
    lm = load_model(SAE.load(sae_folder).cfg.metadata.model_name)
    prov, _ = Provenance.from_sae(SAE.load(sae_folder))
    sae, counts, seen = SAE.load(sae_folder), torch.zeros(16), 0
    for ids, keep in token_batches(prov, lm.tokenizer, 4):
        keep = keep & ~after_special_mask(ids, lm.tokenizer.all_special_ids, 1)
        acts = lm.run_to_hooks(ids, ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"]
        counts += ((sae.encode(acts) > 0) & keep[..., None]).sum((0, 1))
        seen += int(keep.sum())
        if seen >= 200:
            break
    assert [s["fire_count"] for s in kept] == counts.long().tolist()
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "bad"), "--exclude-after-special", "-1"]) != 0
    assert "--exclude-after-special must be 0 or more, got -1" in capsys.readouterr().err
