"""The original mats_sae_training API over saekit: its session loader, model calls and names.

```python
from saekit.compat import LMSparseAutoencoderSessionloader
model, sparse_autoencoder, activation_store = (
    LMSparseAutoencoderSessionloader.load_session_from_pretrained(path)
)
```

`model` is a `HookedLanguageModel` (a saekit `LanguageModel` answering the TransformerLens
calls the original tutorials make: `model(text, return_type="loss")`, `run_with_cache`,
`run_with_hooks`, `model.hooks(...)`, `to_tokens`, `to_str_tokens`, `to_string`);
`sparse_autoencoder` is a saekit SAE whose `cfg` also answers to the original names
(`cfg.hook_point`, `hook_point_layer`, `l1_coefficient`, `lp_norm`, ...). The original import
paths (`sae_training.*`, `sae_analysis.*`) are thin modules over this one; docs/compat.md
lists where saekit deliberately differs.
"""

from saekit.compat import tl_utils
from saekit.compat.legacy_config import MAPPING, LanguageModelSAERunnerConfig, LegacySAEConfig
from saekit.compat.model import ActivationCache, HookedLanguageModel, HookInfo, next_token_loss
from saekit.compat.session import (
    ActivationsStore,
    LMSparseAutoencoderSessionloader,
    SAEGroup,
    hooked,
    with_legacy_names,
)

__all__ = [
    "MAPPING",
    "ActivationCache",
    "ActivationsStore",
    "HookInfo",
    "HookedLanguageModel",
    "LMSparseAutoencoderSessionloader",
    "LanguageModelSAERunnerConfig",
    "LegacySAEConfig",
    "SAEGroup",
    "hooked",
    "next_token_loss",
    "tl_utils",
    "with_legacy_names",
]
