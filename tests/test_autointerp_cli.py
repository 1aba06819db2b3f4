"""`saekit explain` end to end on the tiny model, the LLM a local fake OpenAI server."""

from __future__ import annotations

import json
import re

import pytest
import torch

from fake_llm import FakeServer
from saekit.cli import main


@pytest.fixture(scope="module")
def sae_folder(tiny_model_dir, tmp_path_factory):
    from saekit.saes import SAE

    torch.manual_seed(0)
    meta = {"model_name": str(tiny_model_dir), "hook_name": "blocks.1.hook_resid_post",
            "dataset_path": "builtin:python-docs", "context_size": 24}  # fmt: skip
    sae = SAE.create("topk", d_in=64, d_sae=32, k=2, metadata=meta)
    folder = tmp_path_factory.mktemp("sae")
    sae.save(folder)
    return folder


def _answer(body):
    """Explains every feature as 'the letter e'; says 1 where an excerpt has a marked token."""
    prompt = body["messages"][-1]["content"]
    if "Strength:" in prompt:
        return "Explanation: the letter e"
    excerpts = re.findall(r"^Excerpt \d+: (.*)$", prompt, re.M)
    return json.dumps([int("<<" in e) for e in excerpts])


def test_explain_cli(sae_folder, tmp_path, capsys):
    server = FakeServer(answer=_answer)
    out = tmp_path / "interp"
    common = [str(sae_folder), "--features", "0:4", "--tokens", "2k", "--window", "8",
              "--forward-rows", "4", "--out", str(out), "--no-progress"]  # fmt: skip
    try:
        assert main(["explain", *common, "--collect-only", "--hard-negatives", "2"]) == 0
        assert "examples collected: 4 features" in capsys.readouterr().out
        meta = json.loads((out / "examples.json").read_text())
        assert meta["sae"] == str(sae_folder) and meta["hard_negatives"] == 2
        assert meta["provenance"]["context"] == 24 and meta["window"] == 8
        llm = ["--explainer", f"openai:{server.url}", "--n-activating", "5", "--n-random", "3",
               "--hard-negatives", "2"]  # fmt: skip
        assert main(["explain", *common, *llm]) == 0
        printed = capsys.readouterr().out
        assert "examples reused" in printed and "detection  real" in printed
        assert "AUC is absent" in printed
        lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
        scored = [r for r in lines if "scores" in r]
        assert scored and all(r["explanation"] == "the letter e" for r in scored)
        for r in scored:
            kinds = [i.rstrip("0123456789") for i in r["examples"]["non_activating"]]
            assert kinds.count("rand") <= 3 and kinds.count("hard") <= 2
            # the fake marks every excerpt with a marked token as fitting: fuzzing recall 1
            assert r["scores"]["fuzzing"]["recall"] == 1.0
            assert r["scores"]["detection"]["n_failed"] == 0
        assert all(req["model"] == "fake-model" for req in server.requests)
        # settings that contradict the saved examples are refused, naming them
        assert main(["explain", *common[:-3], "--tokens", "3k", "--out", str(out)]) == 2
        assert "tokens: 2000 there, 3000 now" in capsys.readouterr().err
        assert main(["explain", *common, "--explainer", "gpt4"]) == 2
        assert "--explainer 'gpt4'" in capsys.readouterr().err
    finally:
        server.close()
