"""Steering and interventions: edit SAE features while the model runs or generates.

```python
import saekit
with saekit.steer(lm, sae, {1234: 8.0}, mode="add"):      # or "clamp", "ablate", "scale"
    text = lm.generate("The weather today", max_new_tokens=40)
```

See docs/steering.md.
"""

from saekit.steering.context import Steering, steer
from saekit.steering.interventions import MODES, UNITS, Intervention, SAESource, sae_source
from saekit.steering.positions import Positions

__all__ = [
    "MODES",
    "UNITS",
    "Intervention",
    "Positions",
    "SAESource",
    "Steering",
    "sae_source",
    "steer",
]
