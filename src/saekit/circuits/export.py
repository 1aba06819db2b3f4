"""The pruned graph as JSON in the schema of circuit-tracer's `create_graph_files`, which
Neuronpedia's graph viewer reads: `metadata`, `qParams`, `nodes`, `links`.

Node ids follow circuit-tracer: features `{layer}_{feature}_{pos}`, errors `{layer}_-1_{pos}`,
tokens `E_{token_id}_{pos}`, logits `{n_layers + 1}_{token_id}_{pos}`. A feature node's
`feature` is the Cantor pairing of (layer, feature), as there.
"""

from __future__ import annotations

from typing import Any

from saekit.circuits.graph import Graph, prune


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _token_text(tokenizer, token_id: int) -> str:
    if tokenizer is None:
        return str(token_id)
    return tokenizer.decode([token_id]).replace("\n", "⏎").replace("\t", "→")


def _node(node_id: str, js_id: str, **fields: Any) -> dict[str, Any]:
    base = {"node_id": node_id, "feature": 0, "layer": "", "ctx_idx": 0, "feature_type": "",
            "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
            "jsNodeId": js_id, "clerp": "", "influence": None, "activation": None}  # fmt: skip
    return {**base, **fields}


def graph_nodes(
    graph: Graph, tokenizer=None, influence=None, explanations: dict | None = None
) -> list[dict[str, Any]]:
    """Every node of `graph` as a viewer node (index i of the list = node i of the graph).

    `influence` ([n_nodes], optional) fills `influence`; `explanations` maps (layer, feature)
    to a text shown as the node's `clerp`.
    """
    infl = (lambda i: float(influence[i])) if influence is not None else (lambda i: None)  # noqa: E731
    nodes = []
    for i, (layer, pos, feat) in enumerate(graph.features_N3.tolist()):
        nodes.append(_node(f"{layer}_{feat}_{pos}", f"{layer}_{feat}-0", feature=_cantor(layer, feat),
                           layer=str(layer), ctx_idx=pos, feature_type="cross layer transcoder",
                           influence=infl(i), activation=float(graph.acts_N[i]),
                           clerp=(explanations or {}).get((layer, feat), "")))  # fmt: skip
    for layer in range(graph.n_layers):
        for pos in range(graph.n_pos):
            i = graph.error_index(layer, pos)
            nodes.append(_node(f"{layer}_-1_{pos}", f"{layer}_-1-{pos}", feature=-1, layer=str(layer),
                               ctx_idx=pos, feature_type="mlp reconstruction error",
                               influence=infl(i)))  # fmt: skip
    for pos, tok in enumerate(graph.input_ids_T.tolist()):
        nodes.append(_node(f"E_{tok}_{pos}", f"E_{tok}-{pos}", feature=pos, layer="E", ctx_idx=pos,
                           feature_type="embedding", influence=infl(graph.token_start + pos),
                           clerp=_token_text(tokenizer, tok)))  # fmt: skip
    last, layer = graph.n_pos - 1, str(graph.n_layers + 1)
    for k, (tok, prob) in enumerate(zip(graph.logit_ids_K.tolist(), graph.logit_probs_K.tolist(), strict=True)):
        nodes.append(_node(f"{layer}_{tok}_{last}", f"L_{tok}-{last}", feature=tok, layer=layer,
                           ctx_idx=last, feature_type="logit", token_prob=prob, is_target_logit=k == 0,
                           clerp=f'Output "{_token_text(tokenizer, tok)}" (p={prob:.3f})'))  # fmt: skip
    return nodes


def graph_json(
    graph: Graph,
    tokenizer=None,
    *,
    slug: str = "graph",
    scan: str | None = None,
    transcoder_list: list[str] | None = None,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    explanations: dict | None = None,
) -> dict[str, Any]:
    """The pruned graph in circuit-tracer's / Neuronpedia's JSON schema."""
    kept = prune(graph, node_threshold, edge_threshold)
    nodes = graph_nodes(graph, tokenizer, kept.cumulative, explanations)
    mask = kept.edge_mask & kept.node_mask[:, None] & kept.node_mask[None, :]
    dst, src = mask.nonzero(as_tuple=True)
    weights = graph.adjacency[dst, src].tolist()
    names = [n["node_id"] for n in nodes]
    links = [
        {"source": names[s], "target": names[t], "weight": w}
        for s, t, w in zip(src.tolist(), dst.tolist(), weights, strict=True)
    ]
    connected = {link["source"] for link in links} | {link["target"] for link in links}
    used = [
        n for i, n in enumerate(nodes)
        if kept.node_mask[i] and (n["node_id"] in connected or n["feature_type"] in ("embedding", "logit"))
    ]  # fmt: skip
    tokens = [_token_text(tokenizer, t) for t in graph.input_ids_T.tolist()]
    metadata = {
        "slug": slug,
        "scan": scan or f"saekit-{graph.info.get('model', 'model')}",
        "transcoder_list": list(transcoder_list or graph.info.get("transcoders", [])),
        "prompt_tokens": tokens,
        "prompt": graph.prompt,
        "node_threshold": node_threshold,
        "schema_version": 1,
        "info": {**graph.info, "edge_threshold": edge_threshold},
    }
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": used, "links": links}
