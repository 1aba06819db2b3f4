"""Text -> tokens -> activations: dataset specs, context windows, shuffle buffer, disk cache."""

from saekit.data.activations import ActivationSource
from saekit.data.buffer import ShuffleBuffer
from saekit.data.cache import CachedActivations, CacheError, build_cache, read_manifest
from saekit.data.datasets import (
    HOLDOUT_EVERY,
    DatasetError,
    iter_documents,
    python_docs,
)
from saekit.data.provenance import (
    DataSettings,
    Provenance,
    activation_source,
    settings_for_sae,
    token_batches,
)
from saekit.data.tokens import TokenWindows, iter_token_batches

__all__ = [
    "DataSettings",
    "Provenance",
    "activation_source",
    "settings_for_sae",
    "token_batches",
    "HOLDOUT_EVERY",
    "ActivationSource",
    "CacheError",
    "CachedActivations",
    "DatasetError",
    "ShuffleBuffer",
    "TokenWindows",
    "build_cache",
    "iter_documents",
    "iter_token_batches",
    "python_docs",
    "read_manifest",
]
