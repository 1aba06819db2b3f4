"""`saekit serve`: a local web app over your own SAE folders.

```python
from saekit.serve import ServeState, create_app
state = ServeState(lm, [Entry("sae", "path", sae, data, list(range(sae.cfg.d_sae)))])
uvicorn.run(create_app(state), host="127.0.0.1", port=8000)
```

Pages (plain HTML/JS/CSS from `static/`, no network): the feature index with search, feature
pages, the "what fires here" inspector, the steering playground and the attribution-graph
viewer. See docs/analysis.md.
"""

from saekit.serve.app import create_app
from saekit.serve.catalog import Entry
from saekit.serve.state import Limits, ServeState

__all__ = ["Entry", "Limits", "ServeState", "create_app"]
