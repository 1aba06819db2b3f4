"""Analysing SAE features: one-pass statistics, HTML dashboards, logit lens, token-set enrichment.

```python
from saekit.analysis import build_dashboard, feature_logit_effects
effects = feature_logit_effects(sae, lm, feature=42, k=10)   # W_dec[42] @ W_U, top/bottom tokens
build_dashboard(sae, lm, token_batches, range(100), "dash/", max_tokens=100_000)
```
"""

from saekit.analysis.dashboard import build_dashboard, write_dashboard
from saekit.analysis.enrichment import (
    TOKEN_SETS,
    token_set_enrichment,
    token_set_masks,
    top_features_per_set,
)
from saekit.analysis.features import (
    Examples,
    FeatureStats,
    FeatureStatsCollector,
    collect_feature_stats,
    parse_feature_spec,
)
from saekit.analysis.logit_lens import (
    LogitEffects,
    feature_logit_effects,
    logit_effects,
    logit_weights,
)

__all__ = [
    "TOKEN_SETS",
    "Examples",
    "FeatureStats",
    "FeatureStatsCollector",
    "LogitEffects",
    "build_dashboard",
    "collect_feature_stats",
    "feature_logit_effects",
    "logit_effects",
    "logit_weights",
    "parse_feature_spec",
    "token_set_enrichment",
    "token_set_masks",
    "top_features_per_set",
    "write_dashboard",
]
