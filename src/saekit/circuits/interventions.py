"""Interventions that check a graph: scale a feature node, compare predicted and actual effects.

The graph predicts, in the linear regime (no feature switching on or off), the change of each
target logit (minus the mean logit) when a feature's activation is multiplied by `factor`:
its direct edges, plus the paths through downstream features (each edge divided by its
source's activation is the effect per unit of activation). The actual change is measured
three ways: in the replacement model with every other feature held (direct effects only: the
edges must match exactly), in the replacement model with features recomputed through their
nonlinearities (attention and norms still frozen), and in the real model, adding the change
to the MLP output through `lm.splice` (the steering machinery; nothing frozen).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.circuits.graph import Graph
from saekit.circuits.replacement import Prompt, ReplacementModel


@dataclass
class InterventionResult:
    """Changes of the graph's target logits (each minus the mean logit), [K] each."""

    feature: tuple[int, int, int]
    factor: float
    logit_ids_K: Tensor
    predicted_direct_K: Tensor
    """From the feature's direct edges only."""
    predicted_K: Tensor
    """From every path through the graph's features (linear regime)."""
    actual_direct_K: Tensor
    """Replacement model, all other features held at their clean activations."""
    actual_replacement_K: Tensor
    """Replacement model, features recomputed (attention and norms frozen)."""
    actual_model_K: Tensor
    """The real model, the change added to the layer's MLP output."""

    def as_dict(self) -> dict:
        """A JSON-ready summary."""
        fields = ("predicted_direct_K", "predicted_K", "actual_direct_K",
                  "actual_replacement_K", "actual_model_K")  # fmt: skip
        return {"feature": list(self.feature), "factor": self.factor,
                "logit_ids": self.logit_ids_K.tolist(),
                **{f[:-2]: [round(v, 6) for v in getattr(self, f).tolist()] for f in fields}}  # fmt: skip


def predicted_change(graph: Graph, node: int, factor: float) -> tuple[Tensor, Tensor]:
    """(direct, total) predicted change of the logit nodes when feature node `node` is scaled."""
    N, A = graph.n_features, graph.adjacency.double()
    if not 0 <= node < N:
        raise ValueError(f"node {node} is not a feature node (0..{N - 1})")
    per_unit = A[:, :N] / graph.acts_N.double().clamp_min(1e-30)[None, :]
    delta = torch.zeros(N, dtype=torch.float64)
    delta[node] = (factor - 1.0) * float(graph.acts_N[node])
    total, current = delta.clone(), delta
    for _ in range(graph.n_layers + 2):  # paths between features are at most L long
        current = per_unit[:N] @ current
        if not current.any():
            break
        total += current
    logits = slice(graph.logit_start, None)
    return per_unit[logits] @ delta, per_unit[logits] @ total


def _demeaned(logits_V: Tensor, ids_K: Tensor) -> Tensor:
    return (logits_V - logits_V.mean())[ids_K].double().cpu()


@torch.no_grad()
def intervene(
    model: ReplacementModel,
    graph: Graph,
    feature: tuple[int, int, int],
    factor: float = 0.0,
    prompt: Prompt | None = None,
) -> InterventionResult:
    """Scale feature `(layer, position, feature)` by `factor` (0 ablates) and compare."""
    node = graph.feature_index(*feature)
    if prompt is None:
        prompt = model.prepare(graph.input_ids_T, graph.info.get("frozen_positions"))
    layer, pos, feat = feature
    value = float(graph.acts_N[node]) * factor
    ids = graph.logit_ids_K
    direct, total = predicted_change(graph, node, factor)
    clean = _demeaned(prompt.run.logits_TV[-1], ids)
    held = model.forward(prompt, set_features={feature: value}).logits_TV[-1]
    free = model.forward(prompt, set_features={feature: value}, recompute=True).logits_TV[-1]
    tc = model.transcoders
    change_D = (value - float(graph.acts_N[node])) * tc.decoder_vectors(
        layer, layer, torch.tensor([feat])
    )[0]  # fmt: skip
    hook = tc.saes[layer].cfg.metadata.hook_name_out

    def add(act_BTD: Tensor) -> Tensor:
        act_BTD = act_BTD.clone()
        act_BTD[:, pos] += change_D.to(act_BTD)
        return act_BTD

    with model.lm.splice(hook, add):
        steered = model.lm.logits(graph.input_ids_T[None])[0, -1]
    return InterventionResult(
        feature=tuple(feature), factor=factor, logit_ids_K=ids, predicted_direct_K=direct,
        predicted_K=total, actual_direct_K=_demeaned(held, ids) - clean,
        actual_replacement_K=_demeaned(free, ids) - clean,
        actual_model_K=_demeaned(steered, ids) - clean,
    )  # fmt: skip
