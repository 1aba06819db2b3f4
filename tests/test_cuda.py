"""Checks that need a CUDA device (`pytest -m cuda`; `benchmarks/gpu_check.py` runs them first).

Elsewhere they skip. Each compares the CUDA result with the CPU one on the tiny model.
"""

from __future__ import annotations

import pytest
import torch

from conftest import small_train_config
from test_spliced import make_sae, make_tokens

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_evaluation_on_cuda_equals_the_cpu_one(tiny_model_dir):
    from saekit.evals import evaluate_sae
    from saekit.models import load_model

    results, batches = {}, None
    for device in ("cpu", "cuda"):
        lm = load_model(str(tiny_model_dir), device=device)
        batches = batches or [make_tokens(len(lm.tokenizer), seed=s) for s in (4, 5)]
        results[device] = evaluate_sae(make_sae().to(device), lm, batches)
    for key in ("explained_variance", "l0", "ce_loss_clean", "ce_loss_recovered", "kl_div",
                "kl_div_score"):  # fmt: skip
        assert results["cuda"][key] == pytest.approx(results["cpu"][key], rel=1e-3, abs=1e-5), key


def test_a_short_training_run_on_cuda(tiny_model_dir, tmp_path):
    from saekit.training.run import train

    result = train(small_train_config(tiny_model_dir, tmp_path / "run", device="cuda"))
    (metrics,) = result.final_metrics.values()
    assert metrics["explained_variance"] > 0.0 and metrics["l0"] > 0
