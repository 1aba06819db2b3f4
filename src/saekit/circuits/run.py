"""Trace a prompt end to end: load, estimate memory, attribute, prune, score, check, write.

`trace_prompt(model, "text", out="graph/")` is what `saekit attribute` runs.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from saekit.circuits.attribute import attribute
from saekit.circuits.export import graph_json
from saekit.circuits.graph import Graph, prune, scores
from saekit.circuits.interventions import intervene
from saekit.circuits.replacement import Prompt, ReplacementModel, special_positions
from saekit.circuits.transcoders import PerLayerTranscoders
from saekit.circuits.viewer import write_viewer
from saekit.fileio import atomic_write_text


def load_replacement(
    transcoders: Sequence, model=None, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> ReplacementModel:
    """A replacement model from transcoder folders (or SAEs) and a model (a spec or a
    `LanguageModel`; default: the transcoders' `metadata.model_name`)."""
    from saekit import load_sae
    from saekit.models import load_model

    if not transcoders:
        raise ValueError("give one transcoder folder per layer")
    saes = [load_sae(str(t), device=device) if isinstance(t, (str, Path)) else t for t in transcoders]
    if model is None or isinstance(model, str):
        spec = model or saes[0].cfg.metadata.model_name
        if not spec:
            raise ValueError("the transcoders record no model_name; pass --model")
        model = load_model(spec, device=device, dtype=dtype)
    saes = [s.to(device=model.device, dtype=model.dtype) for s in saes]  # --dtype: one dtype throughout
    return ReplacementModel(model, PerLayerTranscoders(saes, model.n_layers))


def tokenize(model: ReplacementModel, text: str, prepend_bos: bool = True) -> torch.Tensor:
    """The prompt's tokens, with the BOS token first when the tokenizer has one (and asked)."""
    lm = model.lm
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if prepend_bos and lm.bos_token_id is not None and (not ids or ids[0] != lm.bos_token_id):
        ids = [lm.bos_token_id, *ids]
    if not ids:
        raise ValueError("the prompt has no tokens")
    return torch.tensor(ids)


def estimate_memory(
    model: ReplacementModel, n_pos: int, n_features: int, batch_size: int, max_feature_nodes: int | None = None
) -> dict[str, int]:
    """Bytes each part of the attribution needs (float32), beyond the model and transcoders."""
    fz, L, T = model.frozen, model.n_layers, n_pos
    D, V, H = model.lm.d_model, fz.unembed_matrix().shape[1], fz.n_heads
    kept = n_features if max_feature_nodes is None else min(n_features, max_feature_nodes)
    sources = n_features + L * T + T
    nodes = kept + L * T + T + 10
    parts = {
        "clean_forward": 4 * (T * D * (3 * L + 1) + L * H * T * T + T * V),
        "feature_vectors": 4 * 2 * n_features * D,
        "backward_sweep": 4 * batch_size * (3 * T * D + 2 * -(-n_features // L) + sources),
        "adjacency_rows": 4 * 2 * (kept + 10) * sources if kept < n_features else 0,
        "feature_ranking": 4 * 2 * (kept + 10) * sources if kept < n_features else 0,
        "adjacency_and_pruning": 4 * 4 * nodes * nodes,
    }
    parts["total"] = sum(parts.values())
    return parts


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


@dataclass
class TraceResult:
    """What `trace_prompt` produced."""

    graph: Graph
    json: dict
    memory_estimate: dict[str, int]
    interventions: list[dict] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def feature_info_from_dashboards(folders: Sequence[str]) -> dict[str, dict]:
    """`{"layer_feature": {...}}` from dashboard folders (one per layer, in layer order):
    their `features.json`, plus `explanations.json` (`{feature: text}`) when present."""
    info: dict[str, dict] = {}
    for layer, folder in enumerate(folders):
        path = Path(folder)
        explanations = {}
        if (path / "explanations.json").exists():
            explanations = json.loads((path / "explanations.json").read_text())
        for row in json.loads((path / "features.json").read_text()):
            entry = {"top_activating_tokens": row.get("top_activating_tokens", [])}
            if str(row["feature"]) in explanations:
                entry["explanation"] = explanations[str(row["feature"])]
            info[f"{layer}_{row['feature']}"] = entry
    return info


def trace_prompt(
    model: ReplacementModel,
    text: str,
    out: str | Path | None = None,
    *,
    slug: str = "graph",
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    max_logits: int = 10,
    desired_prob: float = 0.95,
    batch_size: int = 256,
    max_feature_nodes: int | None = None,
    check_features: int = 5,
    prepend_bos: bool = True,
    exclude_special_tokens: bool = True,
    feature_info: dict[str, dict] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> TraceResult:
    """Attribute `text`, prune, score, check the top features by ablation, write the files.

    Files in `out`: `<slug>.json` (circuit-tracer / Neuronpedia schema), `index.html` (the
    offline viewer), `graph.safetensors` (the dense graph), `interventions.json`.
    With `exclude_special_tokens` (as the transcoders were trained, by default), the MLP
    outputs at BOS/EOS/padding positions are held at their clean values: no nodes there.
    """
    start = time.perf_counter()
    ids = tokenize(model, text, prepend_bos)
    frozen = special_positions(model.lm, ids) if exclude_special_tokens else None
    prompt: Prompt = model.prepare(ids, frozen)
    estimate = estimate_memory(model, len(ids), len(prompt.acts_N), batch_size, max_feature_nodes)
    log(f"{len(ids)} tokens, {len(prompt.acts_N)} active features; memory estimate "
        f"{_gib(estimate['total'])} (" + ", ".join(f"{k} {_gib(v)}" for k, v in estimate.items()
                                                    if k != "total") + ")")  # fmt: skip
    graph = attribute(model, prompt, prompt_text=text, max_logits=max_logits, desired_prob=desired_prob,
                      batch_size=batch_size, max_feature_nodes=max_feature_nodes)  # fmt: skip
    attribution_s = time.perf_counter() - start
    replacement_score, completeness = scores(graph)
    graph.info.update(
        model=model.lm.spec, replacement_score=replacement_score, completeness_score=completeness,
        attribution_seconds=round(attribution_s, 3), n_tokens=len(ids),
        transcoders=[str(s.cfg.metadata.hook_name) for s in model.transcoders.saes],
    )  # fmt: skip
    kept = prune(graph, node_threshold, edge_threshold)
    checks = []
    feats_influence = kept.cumulative[: graph.n_features]
    for node in feats_influence.argsort()[:check_features].tolist():  # lowest cumulative = top
        feature = tuple(graph.features_N3[node].tolist())
        checks.append(intervene(model, graph, feature, 0.0, prompt=prompt).as_dict())
    data = graph_json(graph, model.lm.tokenizer, slug=slug, node_threshold=node_threshold,
                      edge_threshold=edge_threshold)  # fmt: skip
    data["metadata"]["info"]["peak_rss_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    result = TraceResult(graph, data, estimate, checks)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / f"{slug}.json", json.dumps(data))
        write_viewer(folder / "index.html", data, feature_info)
        graph.save(str(folder / "graph.safetensors"))
        atomic_write_text(folder / "interventions.json", json.dumps(checks, indent=1))
        result.files = [str(folder / n) for n in (f"{slug}.json", "index.html", "graph.safetensors",
                                                  "interventions.json")]  # fmt: skip
    log(f"replacement score {replacement_score:.3f}, completeness {completeness:.3f}; "
        f"{int(kept.node_mask.sum())} nodes and {len(data['links'])} links kept; "
        f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    return result
