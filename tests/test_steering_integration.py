"""Steering the real default model (smollm2-135m) with an SAE trained on it by `saekit train`."""

from __future__ import annotations

import json

import pytest
import torch

from saekit import SAE
from saekit.models.generate import encode_prompts, generate_ids
from saekit.steering import steer
from saekit.steering.find import logit_concentration

pytestmark = pytest.mark.integration
HOOK = "blocks.15.hook_resid_pre"
PROMPTS = ["The", "I think that", "Here is a short note:", "She looked at the"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short `saekit train` run (8k tokens) on the default model's middle layer.

    So short a run leaves the decoder close to its random start; `benchmarks/bench_steering.py`
    measures the same property on the fully trained default SAE.
    """
    from saekit.cli import main

    out = tmp_path_factory.mktemp("steer-run")
    argv = ["train", "--tokens", "8192", "--eval-tokens", "0", "--d-sae", "1152", "--out",
            str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return out / HOOK


def test_add_raises_the_logit_lens_top_token_and_noops_change_nothing(default_lm, trained):
    sae = SAE.load(trained)
    assert sae.cfg.metadata.model_name == default_lm.spec
    top_F, z_F = logit_concentration(sae, default_lm)
    feats = z_F.topk(10).indices.tolist()
    ids, mask = encode_prompts(default_lm, PROMPTS)
    clean = default_lm.logits(ids, mask)
    p_clean = clean[:, -1].softmax(-1)
    ratios = []
    for f in feats:
        with steer(default_lm, sae, {f: 8.0}):
            p = default_lm.logits(ids, mask)[:, -1].softmax(-1)
        ratios.append(float(p[:, top_F[f]].mean() / p_clean[:, top_F[f]].mean()))
    assert sum(r > 1 for r in ratios) >= 7, f"P(top token) / P before: {ratios}"
    assert sorted(ratios)[5] > 1.5, f"P(top token) / P before: {ratios}"
    with torch.no_grad():
        f_BTF = sae.encode(default_lm.run_to_hooks(ids, [HOOK], attention_mask=mask)[HOOK])
    inactive = ((f_BTF > 0).sum((0, 1)) == 0).nonzero().squeeze(1)[:20].tolist()
    for kwargs in [dict(features={f: 0.0 for f in feats}),
                   dict(features=inactive, mode="ablate"),
                   dict(features={f: 1.0 for f in feats}, mode="scale")]:  # fmt: skip
        with steer(default_lm, sae, **kwargs):
            torch.testing.assert_close(default_lm.logits(ids, mask), clean, rtol=0, atol=1e-4)


def test_steered_generation_with_cache_equals_without_on_the_real_model(default_lm, trained):
    sae = SAE.load(trained)
    f = int(logit_concentration(sae, default_lm)[1].argmax())
    ids, mask = encode_prompts(default_lm, PROMPTS[:2])
    with steer(default_lm, sae, {f: 8.0}, positions="generated"):
        cached = generate_ids(default_lm, ids, mask, 12)
        full = generate_ids(default_lm, ids, mask, 12, use_cache=False)
    assert torch.equal(cached, full)


def test_saekit_steer_json_on_the_real_model(trained, capsys):
    from saekit.cli import main

    assert main(["steer", str(trained), "--feature", "0", "--strength", "8",
                 "--prompt", "The weather today", "--max-new-tokens", "10", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert {"default", "steered", "kl", "rose", "fell"} <= set(result)
    assert result["kl"] > 0
