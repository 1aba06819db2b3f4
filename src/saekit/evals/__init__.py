"""Evaluation: reconstruction and sparsity metrics, the spliced model, `saekit eval`."""

from saekit.evals.evaluate import (
    METRIC_KEYS,
    EvalTarget,
    evaluate_sae,
    evaluate_saes,
    scalar_metrics,
)
from saekit.evals.metrics import RunningStats
from saekit.evals.spliced import spliced_sae

__all__ = [
    "METRIC_KEYS",
    "EvalTarget",
    "RunningStats",
    "evaluate_sae",
    "evaluate_saes",
    "scalar_metrics",
    "spliced_sae",
]
