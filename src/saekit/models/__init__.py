"""Language models and their hook points.

```python
from saekit.models import load_model
lm = load_model("smollm2-135m")
acts = lm.run_to_hooks(ids_BT, ["blocks.7.hook_resid_pre"])   # stops after layer 6
```
"""

from saekit.models.hooks import HookPoint, resolve_hook
from saekit.models.language_model import LanguageModel
from saekit.models.layouts import Layout, detect_layout
from saekit.models.loading import DEFAULT_MODEL, load_model, resolve_device

__all__ = [
    "DEFAULT_MODEL",
    "HookPoint",
    "LanguageModel",
    "Layout",
    "detect_layout",
    "load_model",
    "resolve_device",
    "resolve_hook",
]
