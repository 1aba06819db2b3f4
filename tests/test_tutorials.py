"""The tutorial scripts in examples/ run end to end (on the tiny model, offline)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_script(name: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


@pytest.fixture(scope="module")
def sae_folder(tiny_model_dir, tmp_path_factory):
    from saekit.saes import SAE

    torch.manual_seed(0)
    meta = {
        "model_name": str(tiny_model_dir),
        "hook_name": "blocks.2.hook_resid_pre",
        "dataset_path": "builtin:python-docs",
        "context_size": 32,
    }
    folder = tmp_path_factory.mktemp("tutorial-sae")
    SAE.create("topk", d_in=64, d_sae=64, k=8, metadata=meta).save(folder)
    return folder


def test_tutorial_evaluate_sae(sae_folder, tmp_path, monkeypatch, capsys):
    from pydoc_data.topics import topics

    # a local text file: held-back documents (every 20th) come quickly from it
    text = tmp_path / "eval.txt"
    text.write_text("\n\n".join(t.replace("\n\n", "\n") for t in topics.values()))
    argv = ["--sae", str(sae_folder), "--dataset", str(text),
            "--eval-tokens", "300", "--dashboard-tokens", "300",
            "--features", "4", "--out", str(tmp_path)]  # fmt: skip
    run_script("tutorial_evaluate_sae.py", argv, monkeypatch)
    out = capsys.readouterr().out
    assert "L0 (active features per token): 8.0" in out  # topk with k=8
    assert "CE loss recovered" in out
    pages = sorted(p.name for p in (tmp_path / "dashboard").glob("feature_*.html"))
    assert len(pages) == 4 and (tmp_path / "dashboard" / "index.html").exists()


def test_tutorial_logit_lens_trains_its_own_sae(tiny_model_dir, tmp_path, monkeypatch, capsys):
    argv = ["--model", str(tiny_model_dir), "--train-tokens", "2048", "--context", "32",
            "--out", str(tmp_path)]  # fmt: skip
    run_script("tutorial_logit_lens.py", argv, monkeypatch)
    out = capsys.readouterr().out
    assert "feature 0 boosts:" in out and "digits" in out and "most skewed" in out
    assert list((tmp_path / "train-run").glob("*/cfg.json"))
