"""Attribution graphs through transcoder features (the circuit-tracing method).

`ReplacementModel(lm, PerLayerTranscoders(saes, n_layers))` freezes a prompt's attention and
norms and swaps MLPs for transcoders plus errors; `attribute(model, ids)` returns a `Graph`
(direct effects between features, errors, tokens and logits); `prune` / `scores` follow
circuit-tracer's definitions; `graph_json` / `write_viewer` write the outputs.
"""

from saekit.circuits.attribute import Attributor, attribute, select_logits
from saekit.circuits.graph import Graph, prune, scores
from saekit.circuits.replacement import Prompt, ReplacementModel
from saekit.circuits.transcoders import PerLayerTranscoders

__all__ = [
    "Attributor", "Graph", "PerLayerTranscoders", "Prompt", "ReplacementModel", "attribute",
    "prune", "scores", "select_logits",
]  # fmt: skip
