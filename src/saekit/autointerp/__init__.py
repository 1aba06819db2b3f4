"""Autointerp: explain SAE features in words with an LLM and score the explanations.

```python
from saekit.autointerp import ExampleSet, collect_examples, make_client, CachedClient, run_autointerp
ex = ExampleSet.from_collected(collect_examples(sae, lm, batches, range(100), max_tokens=200_000),
                               lm.tokenizer)
ex.save("interp/")                                  # reload with ExampleSet.load("interp/")
client = CachedClient(make_client("hf:smollm2-135m"), "interp/llm-cache")
summary = run_autointerp(ex, client, "interp/")     # results.jsonl, summary.json, scores.png
by_feature = load_explanations("interp/")           # {feature: {"explanation": ..., "scores": ...}}
```
"""

from saekit.autointerp.clients import (
    CachedClient,
    Completion,
    LLMClient,
    LLMError,
    OpenAIClient,
    TokenLogprobs,
    make_client,
)
from saekit.autointerp.examples import (
    CollectedExamples,
    ExampleCollector,
    collect_examples,
    decoder_neighbours,
)
from saekit.autointerp.exampleset import ExampleSet, FeatureExamples, Window
from saekit.autointerp.explain import explain, parse_explanation
from saekit.autointerp.hf import HFClient
from saekit.autointerp.metrics import classification_metrics, roc_auc
from saekit.autointerp.prompts import load_templates
from saekit.autointerp.results import load_explanations
from saekit.autointerp.run import InterpSettings, run_autointerp
from saekit.autointerp.score import classify, parse_predictions, scorer_samples

__all__ = [
    "CachedClient",
    "CollectedExamples",
    "Completion",
    "ExampleCollector",
    "ExampleSet",
    "FeatureExamples",
    "HFClient",
    "InterpSettings",
    "LLMClient",
    "LLMError",
    "OpenAIClient",
    "TokenLogprobs",
    "Window",
    "classification_metrics",
    "classify",
    "collect_examples",
    "decoder_neighbours",
    "explain",
    "load_explanations",
    "load_templates",
    "make_client",
    "parse_explanation",
    "parse_predictions",
    "roc_auc",
    "run_autointerp",
    "scorer_samples",
]
