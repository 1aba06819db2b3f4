"""The attribution graph: nodes, the dense adjacency, influence, pruning and scores.

Nodes are ordered as circuit-tracer orders them: [features (N), errors (L * T, layer-major),
tokens (T), logits (K)]. `adjacency[t, s]` is the direct effect of source s on target t
(rows are targets, columns sources). Influence, pruning and the replacement and completeness
scores follow the definitions of circuit-tracer (`graph.py`): rows normalised to unit L1 of
absolute weights, influence the sum over paths weighted by the logits' probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor


@dataclass
class Graph:
    """An attribution graph of one prompt.

    Attributes:
        prompt: the text (decoded tokens when given ids).
        input_ids_T: its tokens.
        features_N3: feature nodes as (layer, position, feature) rows.
        acts_N: their activations.
        logit_ids_K, logit_probs_K: the target logits (vocabulary ids) and their probabilities.
        adjacency: [n_nodes, n_nodes], direct effects, rows targets and columns sources.
        n_layers: the model's layer count.
        info: free-form metadata (model, transcoder folders, timings, scores).
    """

    prompt: str
    input_ids_T: Tensor
    features_N3: Tensor
    acts_N: Tensor
    logit_ids_K: Tensor
    logit_probs_K: Tensor
    adjacency: Tensor
    n_layers: int
    info: dict = field(default_factory=dict)

    @property
    def n_pos(self) -> int:
        return int(self.input_ids_T.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.features_N3.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_ids_K.shape[0])

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    def error_index(self, layer: int, pos: int) -> int:
        """Node index of the error node at (layer, pos)."""
        return self.error_start + layer * self.n_pos + pos

    def feature_index(self, layer: int, pos: int, feature: int) -> int:
        """Node index of an active feature; KeyError when it is not a node."""
        hit = (self.features_N3 == torch.tensor([layer, pos, feature])).all(1).nonzero()
        if len(hit) == 0:
            raise KeyError(f"feature ({layer}, {pos}, {feature}) is not a node of the graph")
        return int(hit[0, 0])

    def logit_weights(self) -> Tensor:
        """[n_nodes]: the logits' probabilities at the logit nodes, 0 elsewhere."""
        weights = torch.zeros(self.adjacency.shape[0], dtype=self.adjacency.dtype)
        weights[self.logit_start :] = self.logit_probs_K.to(weights.dtype)
        return weights

    def save(self, path: str) -> None:
        """Write the graph (atomically) as safetensors: tensors + its text fields in the metadata."""
        import json

        from safetensors.torch import save_file

        from saekit.fileio import atomic_write

        tensors = {k: getattr(self, k).contiguous() for k in
                   ("input_ids_T", "features_N3", "acts_N", "logit_ids_K", "logit_probs_K", "adjacency")}  # fmt: skip
        meta = {"prompt": self.prompt, "n_layers": str(self.n_layers), "info": json.dumps(self.info)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @staticmethod
    def load(path: str) -> Graph:
        """Read a graph written by `save`."""
        import json

        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return Graph(prompt=meta["prompt"], n_layers=int(meta["n_layers"]),
                     info=json.loads(meta["info"]), **tensors)  # fmt: skip


def normalize_rows(matrix: Tensor) -> Tensor:
    """|matrix| with each row scaled to unit sum (all-zero rows stay zero)."""
    absolute = matrix.abs()
    return absolute / absolute.sum(1, keepdim=True).clamp(min=1e-10)


def influence(normalized: Tensor, weights: Tensor, max_steps: int = 10_000) -> Tensor:
    """`weights @ (A + A^2 + ...)`: total influence of each node on the weighted targets.

    The graph is acyclic, so the series ends after at most (longest path) steps.
    """
    current = weights @ normalized
    total = current.clone()
    for _ in range(max_steps):
        if not current.any():
            return total
        current = current @ normalized
        total += current
    raise RuntimeError(f"influence did not converge in {max_steps} steps (is the graph cyclic?)")


def _threshold(scores: Tensor, keep: float) -> Tensor:
    """The smallest score among the top scores that together make `keep` of the total."""
    ordered = scores.flatten().sort(descending=True).values
    cumulative = ordered.cumsum(0) / ordered.sum().clamp(min=1e-30)
    index = min(int(torch.searchsorted(cumulative, torch.tensor(keep, dtype=cumulative.dtype))),
                len(ordered) - 1)  # fmt: skip
    return ordered[index]


class Pruned(NamedTuple):
    """What `prune` keeps."""

    node_mask: Tensor
    """[n_nodes] bool."""
    edge_mask: Tensor
    """[n_nodes, n_nodes] bool (rows targets)."""
    cumulative: Tensor
    """[n_nodes]: the fraction of total influence of the nodes ranked up to this one."""


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """Keep the nodes (then edges) that carry `node_threshold` (`edge_threshold`) of the total
    influence on the logits; tokens and logits always stay, features and errors need an
    outgoing edge, features an incoming one."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    A, weights = graph.adjacency, graph.logit_weights()
    node_influence = influence(normalize_rows(A), weights)
    node_mask = node_influence >= _threshold(node_influence, node_threshold)
    node_mask[graph.token_start :] = True
    kept = A * node_mask[:, None] * node_mask[None, :]
    norm_kept = normalize_rows(kept)
    edge_scores = norm_kept * (influence(norm_kept, weights) + weights)[:, None]
    edge_mask = edge_scores >= _threshold(edge_scores, edge_threshold)
    edge_mask &= kept != 0
    inner = graph.token_start
    while True:
        before = node_mask.clone()
        node_mask[:inner] &= edge_mask[:, :inner].any(0)
        node_mask[: graph.n_features] &= edge_mask[: graph.n_features].any(1)
        edge_mask &= node_mask[:, None] & node_mask[None, :]
        if torch.equal(before, node_mask):
            break
    order = node_influence.argsort(descending=True)
    cumulative = torch.zeros_like(node_influence)
    cumulative[order] = node_influence[order].cumsum(0) / node_influence.sum().clamp(min=1e-30)
    return Pruned(node_mask, edge_mask, cumulative)


def scores(graph: Graph) -> tuple[float, float]:
    """(replacement score, completeness score) as circuit-tracer defines them.

    Replacement: of the influence of tokens and errors on the logits, the fraction from
    tokens (all paths through features). Completeness: the influence-weighted mean, over
    nodes, of the fraction of each node's normalised input that does not come from errors.
    """
    normalized = normalize_rows(graph.adjacency)
    weights = graph.logit_weights()
    node_influence = influence(normalized, weights)
    errors = slice(graph.error_start, graph.token_start)
    token = node_influence[graph.token_start : graph.logit_start].sum()
    error = node_influence[errors].sum()
    replacement = token / (token + error).clamp(min=1e-30)
    non_error = 1 - normalized[:, errors].sum(1)
    output = node_influence + weights
    completeness = (non_error * output).sum() / output.sum()
    return float(replacement), float(completeness)
