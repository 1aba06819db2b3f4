"""saekit: train, load, evaluate and analyse sparse autoencoders on language-model activations.

```python
import saekit
sae = saekit.SAE.create("topk", d_in=576, d_sae=4608, k=32)
out = sae(x)                          # out.sae_out, out.feature_acts, loss parts
sae.save("my_sae"); sae = saekit.load_sae("my_sae")
lm = saekit.load_model("smollm2-135m")
```
"""

from saekit.io.load import load_sae
from saekit.io.sparsity import load_feature_sparsity
from saekit.models import load_model
from saekit.saes import SAE, SAEConfig, SAEOutput
from saekit.steering import Intervention, steer

__version__ = "0.1.0"

__all__ = [
    "SAE",
    "SAEConfig",
    "SAEOutput",
    "Intervention",
    "__version__",
    "load_feature_sparsity",
    "load_model",
    "load_sae",
    "steer",
]
