"""Exactness of the local replacement model and of attribution, on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from circuits_helpers import random_transcoders
from saekit.circuits import PerLayerTranscoders, ReplacementModel, attribute, prune, scores
from saekit.circuits.interventions import intervene, predicted_change

PROMPT = "The quick brown fox jumps over the lazy"


@pytest.fixture(scope="module")
def ids(tiny_lm):
    return torch.tensor(tiny_lm.tokenizer(PROMPT)["input_ids"])


def replacement(lm, arch="relu", read="resid", **settings) -> ReplacementModel:
    saes = random_transcoders(lm, arch=arch, read=read, **settings)
    return ReplacementModel(lm, PerLayerTranscoders(saes, lm.n_layers))


def bias_terms(model, prompt):
    """Pre-activations and logits with every source (tokens, features, errors) removed."""
    out = model.forward(prompt, feature_acts_N=torch.zeros_like(prompt.acts_N), embed_scale=0,
                        error_scale=0)  # fmt: skip
    return out.pre_N, out.logits_TV[-1]


@pytest.mark.parametrize(
    "arch,read,settings",
    [("relu", "resid", {}), ("topk", "resid", {"k": 6}), ("jumprelu", "normed", {})],
)
def test_replacement_model_reproduces_the_clean_logits(tiny_lm, ids, arch, read, settings):
    model = replacement(tiny_lm, arch, read, **settings)
    prompt = model.prepare(ids)
    clean = tiny_lm.logits(ids[None])[0]
    torch.testing.assert_close(prompt.run.logits_TV, clean, atol=1e-5, rtol=1e-5)
    for recompute in (False, True):
        out = model.forward(prompt, recompute=recompute)
        torch.testing.assert_close(out.logits_TV, clean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.pre_N, prompt.pre_N, atol=1e-5, rtol=1e-5)
    assert len(prompt.features_N3) > 0
    # the error is what the transcoder misses: non-zero for random transcoders
    assert prompt.error_LTD.abs().max() > 1e-3


@pytest.mark.parametrize("read,frozen", [("resid", None), ("normed", None), ("resid", [0, 3])])
def test_input_edges_plus_biases_sum_to_each_nodes_input(tiny_lm, ids, read, frozen):
    model = replacement(tiny_lm, read=read)
    # odd batch: targets of mixed layers per sweep
    graph = attribute(model, ids, batch_size=37, frozen_positions=frozen)
    prompt = model.prepare(ids, frozen)
    bias_pre, bias_logits = bias_terms(model, prompt)
    assert graph.n_features == len(prompt.acts_N) > 50
    if frozen:  # held MLP outputs: no features there, zero error nodes, logits still exact
        assert not torch.isin(graph.features_N3[:, 1], torch.tensor(frozen)).any()
        errors = torch.tensor([graph.error_index(layer, p) for layer in range(graph.n_layers) for p in frozen])
        assert not graph.adjacency[:, errors].any() and graph.info["frozen_positions"] == frozen
        torch.testing.assert_close(model.forward(prompt).logits_TV, tiny_lm.logits(ids[None])[0],
                                   atol=1e-5, rtol=1e-5)  # fmt: skip
    edges_sum = graph.adjacency[: graph.n_features].sum(1).double()
    torch.testing.assert_close(edges_sum + bias_pre.double(), prompt.pre_N.double(), atol=2e-5,
                               rtol=1e-5)  # fmt: skip
    clean = prompt.run.logits_TV[-1]
    target = (clean - clean.mean())[graph.logit_ids_K] - (bias_logits - bias_logits.mean())[graph.logit_ids_K]
    torch.testing.assert_close(graph.adjacency[graph.logit_start :].sum(1), target, atol=2e-5, rtol=1e-5)
    # causality: no feature receives an edge from a feature of its own or a later layer
    feats = graph.features_N3
    A = graph.adjacency[: graph.n_features, : graph.n_features]
    later = feats[None, :, 0] >= feats[:, None, 0]
    assert not A[later].any()
    # and only from positions at or before its own
    assert not A[feats[None, :, 1] > feats[:, None, 1]].any()


def test_rows_do_not_depend_on_the_batch(tiny_lm, ids):
    model = replacement(tiny_lm)
    one = attribute(model, ids, batch_size=5)  # several sweeps per layer; 1 is slow
    many = attribute(model, ids, batch_size=500)
    torch.testing.assert_close(one.adjacency, many.adjacency, atol=1e-6, rtol=1e-5)


def test_ablation_changes_downstream_nodes_as_the_edges_predict(tiny_lm, ids):
    model = replacement(tiny_lm)
    graph = attribute(model, ids)
    prompt = model.prepare(ids)
    for node in (0, graph.n_features // 2, graph.n_features - 40):
        feature = tuple(graph.features_N3[node].tolist())
        held = model.forward(prompt, set_features={feature: 0.0})
        # direct effects: with other features held, each pre-activation moves by -edge
        torch.testing.assert_close(held.pre_N - prompt.pre_N, -graph.adjacency[: graph.n_features, node],
                                   atol=1e-5, rtol=1e-4)  # fmt: skip
        result = intervene(model, graph, feature, factor=0.0, prompt=prompt)
        torch.testing.assert_close(result.actual_direct_K, result.predicted_direct_K, atol=1e-5, rtol=1e-4)


def test_small_scaling_matches_the_graph_through_downstream_features(tiny_lm, ids):
    model = replacement(tiny_lm)
    graph = attribute(model, ids)
    strongest = graph.adjacency[graph.logit_start, : graph.n_features].abs().argmax()
    feature = tuple(graph.features_N3[strongest].tolist())
    result = intervene(model, graph, feature, factor=1.01)
    # linear regime: features recomputed through their ReLUs follow the paths of the graph
    torch.testing.assert_close(result.actual_replacement_K, result.predicted_K, atol=1e-5, rtol=1e-3)
    assert not torch.allclose(result.predicted_K, result.predicted_direct_K)
    direct, total = predicted_change(graph, int(strongest), 0.0)
    assert direct.shape == total.shape == (graph.n_logits,)
    # the real model (attention, norms, MLP all live) moves in the same direction
    assert (result.actual_model_K * result.predicted_K).sum() > 0


def test_max_feature_nodes_keeps_the_most_influential_features(tiny_lm, ids):
    model = replacement(tiny_lm)
    full = attribute(model, ids)
    part = attribute(model, ids, max_feature_nodes=60, batch_size=16, update_every=1)
    assert part.n_features == 60
    extra = full.n_features - part.n_features
    assert part.adjacency.shape[0] == full.adjacency.shape[0] - extra
    # every kept feature's row equals its row in the full graph, restricted to kept sources
    index = [full.feature_index(*f) for f in part.features_N3.tolist()]
    keep_cols = torch.tensor(index + list(range(full.error_start, full.adjacency.shape[0])))
    keep_rows = torch.tensor(index + list(range(full.logit_start, full.adjacency.shape[0])))
    expected = full.adjacency[keep_rows][:, keep_cols]
    got = torch.cat([part.adjacency[:60], part.adjacency[part.logit_start :]])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    # the ranking from a subset of rows is the influence of the square graph holding only them
    from saekit.circuits.attribute import _partial_influence
    from saekit.circuits.graph import influence, normalize_rows

    N, S = full.n_features, full.logit_start
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0))[:40]
    square = torch.zeros_like(full.adjacency).double()
    square[order] = full.adjacency[order].double()
    square[S:] = full.adjacency[S:].double()
    expected = influence(normalize_rows(square), full.logit_weights().double())[:N]
    got = _partial_influence(full.adjacency[S:, :S].double(), full.logit_probs_K, full.adjacency[order, :S].double(), order, N)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_pruning_and_scores(tiny_lm, ids):
    graph = attribute(replacement(tiny_lm), ids)
    kept = prune(graph, 0.8, 0.98)
    assert kept.node_mask[graph.token_start :].all()
    assert 0 < kept.node_mask[: graph.n_features].sum() < graph.n_features
    assert not kept.edge_mask[~kept.node_mask].any() and not kept.edge_mask[:, ~kept.node_mask].any()
    everything = prune(graph, 1.0, 1.0)
    assert everything.node_mask.sum() >= kept.node_mask.sum()
    replacement_score, completeness = scores(graph)
    assert 0 < replacement_score < 1 and 0 < completeness < 1
    # without errors (transcoders perfect) both scores would be 1: zero the error columns
    graph.adjacency[:, graph.error_start : graph.token_start] = 0
    assert scores(graph) == pytest.approx((1.0, 1.0))
    with pytest.raises(ValueError, match="node_threshold"):
        prune(graph, 1.5)


def test_graph_round_trips_through_a_file(tiny_lm, ids, tmp_path):
    from saekit.circuits import Graph

    graph = attribute(replacement(tiny_lm), ids, max_feature_nodes=30)
    graph.save(str(tmp_path / "g.safetensors"))
    back = Graph.load(str(tmp_path / "g.safetensors"))
    assert back.prompt == graph.prompt and back.info == graph.info
    torch.testing.assert_close(back.adjacency, graph.adjacency)


def test_transcoder_set_errors_name_the_problem(tiny_lm):
    saes = random_transcoders(tiny_lm)
    with pytest.raises(ValueError, match=r"missing layers \[2\]"):
        PerLayerTranscoders(saes[:2] + saes[3:], tiny_lm.n_layers)
    with pytest.raises(ValueError, match="two transcoders for layer 1"):
        PerLayerTranscoders(saes + [saes[1]], tiny_lm.n_layers)
    saes[0].cfg.metadata.hook_name = "blocks.0.hook_resid_pre"
    with pytest.raises(ValueError, match="hook_resid_mid"):
        PerLayerTranscoders(saes, tiny_lm.n_layers)


@pytest.mark.integration
def test_exact_on_the_default_model(default_lm):
    """SmolLM2-135M (GQA, tied embeddings): replacement logits and edge sums, BOS frozen."""
    saes = random_transcoders(default_lm, arch="relu", d_sae=32, read="normed")
    model = ReplacementModel(default_lm, PerLayerTranscoders(saes, default_lm.n_layers))
    ids = torch.tensor([default_lm.bos_token_id, *default_lm.tokenizer("Paris is in")["input_ids"]])
    prompt = model.prepare(ids, frozen_positions=[0])
    clean = default_lm.logits(ids[None])[0]
    torch.testing.assert_close(model.forward(prompt).logits_TV, clean, atol=1e-4, rtol=1e-4)
    graph = attribute(model, prompt, batch_size=128)
    assert graph.n_features > 100 and not (graph.features_N3[:, 1] == 0).any()
    bias_pre, _ = bias_terms(model, prompt)
    edges = graph.adjacency[: graph.n_features].sum(1).double()
    torch.testing.assert_close(edges + bias_pre.double(), prompt.pre_N.double(), atol=1e-4, rtol=1e-4)
