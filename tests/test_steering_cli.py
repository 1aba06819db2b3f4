"""`saekit steer` and `saekit features` on a tiny random Llama and an SAE folder."""

from __future__ import annotations

import json

import pytest
import torch

from saekit import SAE
from saekit.cli import main

HOOK = "blocks.2.hook_resid_pre"


@pytest.fixture(scope="module")
def sae_dir(tiny_model_dir, tmp_path_factory):
    torch.manual_seed(0)
    sae = SAE.create("topk", d_in=64, d_sae=128, k=8,
                     metadata={"model_name": str(tiny_model_dir), "hook_name": HOOK})  # fmt: skip
    with torch.no_grad():
        sae.W_dec.mul_(6.0)
    out = tmp_path_factory.mktemp("sae") / HOOK
    sae.save(out)
    return str(out)


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_steer_json_has_both_completions_and_the_shift(sae_dir, capsys):
    code, out, _ = run(capsys, "steer", sae_dir, "--feature", "3,9", "--strength", "8,-4",
                       "--prompt", "The quick", "--prompt", "Lists", "--max-new-tokens", "6",
                       "--json")  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in rows] == ["The quick", "Lists"]
    for r in rows:
        assert {"default", "steered", "kl", "rose", "fell", "interventions"} <= set(r)
        assert r["kl"] > 0 and r["default"] != r["steered"]
        assert r["rose"][0]["p_steered"] > r["rose"][0]["p_default"]
        assert r["fell"][0]["p_steered"] < r["fell"][0]["p_default"]
        assert r["interventions"][0]["features"] == {"3": 8.0, "9": -4.0}


def test_steer_text_output_side_by_side(sae_dir, capsys):
    code, out, _ = run(capsys, "steer", sae_dir, "--feature", "3", "--strength", "8",
                       "--prompt", "The quick", "--max-new-tokens", "5", "--mode", "clamp",
                       "--positions=-2:", "--sample", "--seed", "1")  # fmt: skip
    assert code == 0
    assert "default" in out and "│ steered" in out
    assert "steering: clamp feature 3 to 8 at blocks.2.hook_resid_pre, positions -2:" in out
    assert "KL(default || steered)" in out and "rose" in out and "fell" in out


def test_noop_steer_has_zero_kl_and_equal_completions(sae_dir, capsys):
    code, out, _ = run(capsys, "steer", sae_dir, "--feature", "3", "--strength", "0",
                       "--prompt", "The quick", "--max-new-tokens", "6", "--json")  # fmt: skip
    r = json.loads(out)
    assert code == 0 and r["kl"] == 0.0 and r["default"] == r["steered"]
    assert r["rose"] == [] and r["fell"] == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--feature", "999"], "feature 999 is out of range"),
        (["--feature", "3", "--strength", "nan"], "finite"),
        (["--feature", "3", "--mode", "boost"], "mode='boost'"),
        (["--feature", "3", "--positions", "middle"], "positions='middle'"),
        (["--feature", "3,4", "--strength", "1,2,3"], "--strength has 3 values"),
        (["--feature", "x"], "--feature 'x'"),
        (["--feature", "3", "--hook", "blocks.7.hook_resid_pre"], "layer 7 out of range"),
    ],
)
def test_steer_bad_input(sae_dir, capsys, argv, message):
    code, _, err = run(capsys, "steer", sae_dir, "--prompt", "The", *argv)
    assert code == 2 and message in err


def test_features_by_token_text_and_ablation(sae_dir, capsys):
    code, out, _ = run(capsys, "features", sae_dir, "--token", " the", "--k", "3", "--json")
    assert code == 0 and len(json.loads(out)["features"]) == 3
    code, out, _ = run(capsys, "features", sae_dir, "--token", " the", "--k", "3")
    assert code == 0 and "boosts ' the'" in out
    code, out, _ = run(capsys, "features", sae_dir, "--text", "Lists are", "--k", "2", "--json")
    data = json.loads(out)
    assert code == 0 and len(data["tokens"]) == len(data["features"])
    code, out, _ = run(capsys, "features", sae_dir, "--text", "Lists are mutable", "--ablation")
    assert code == 0 and "clean next-token loss" in out
    code, _, err = run(capsys, "features", sae_dir, "--token", "a b c d")
    assert code == 2 and "not one" in err
