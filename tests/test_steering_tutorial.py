"""examples/tutorial_steering.py runs end to end on the tiny model (offline)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch

from saekit import SAE

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "tutorial_steering.py"


def test_tutorial_steering_runs(tiny_model_dir, tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    meta = {"model_name": str(tiny_model_dir), "hook_name": "blocks.2.hook_resid_pre"}
    SAE.create("topk", d_in=64, d_sae=128, k=8, metadata=meta).save(tmp_path / "sae")
    argv = ["--sae", str(tmp_path / "sae"), "--token", " the", "--max-new-tokens", "5"]
    monkeypatch.setattr(sys, "argv", [SCRIPT.name, *argv])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out = capsys.readouterr().out
    for step in ("1. features", "2. add", "3. the next-token", "4. the other modes", "5. ablating"):
        assert step in out
    assert "clamp " in out and "largest logit change 0.00e+00" in out  # the no-op clamp
