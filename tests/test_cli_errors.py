"""Mistakes on the command line end in one line naming the problem (exit 2), no traceback."""

from __future__ import annotations

import sys

import pytest

from saekit.cli import main
from saekit.saes import SAE


@pytest.fixture
def sae_folder(tmp_path):
    SAE.create("relu", d_in=8, d_sae=16, metadata={"model_name": "m", "hook_name": "h"}).save(tmp_path / "s")
    return tmp_path / "s"


def test_eval_context_0_and_dashboard_tokens_0_are_refused(sae_folder, tmp_path, capsys):
    assert main(["eval", str(sae_folder), "--context", "0"]) == 2
    assert "--context must be at least 2, got 0" in capsys.readouterr().err
    assert main(["dashboard", str(sae_folder), "--tokens", "0", "--out", str(tmp_path / "d")]) == 2
    assert "--tokens must be positive, got 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # used to write an empty dashboard


def test_a_tl_model_without_transformer_lens_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # as if not installed
    argv = ["train", "--model", "tl:gpt2", "--tokens", "1k", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "needs TransformerLens: pip install 'saekit[tl]'" in err and "Traceback" not in err
