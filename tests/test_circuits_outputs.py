"""Graph JSON (circuit-tracer / Neuronpedia schema), the offline viewer, `saekit attribute`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from circuits_helpers import random_transcoders
from saekit.circuits import Graph, PerLayerTranscoders, ReplacementModel, attribute, prune
from saekit.circuits.export import graph_json
from saekit.circuits.run import estimate_memory, tokenize, trace_prompt
from saekit.circuits.viewer import viewer_html

NODE_KEYS = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob",
             "is_target_logit", "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp", "influence",
             "activation"}  # fmt: skip
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def model(tiny_lm):
    return ReplacementModel(tiny_lm, PerLayerTranscoders(random_transcoders(tiny_lm), tiny_lm.n_layers))


@pytest.fixture(scope="module")
def graph(model):
    return attribute(model, tokenize(model, "The cat sat on the mat because"))


def test_graph_json_has_the_circuit_tracer_schema(model, graph):
    data = graph_json(graph, model.lm.tokenizer, slug="cat")
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    meta = data["metadata"]
    assert meta["slug"] == "cat" and meta["schema_version"] == 1 and meta["node_threshold"] == 0.8
    assert len(meta["prompt_tokens"]) == graph.n_pos
    for node in data["nodes"]:
        assert set(node) == NODE_KEYS
    types = {n["feature_type"] for n in data["nodes"]}
    assert {"embedding", "logit", "cross layer transcoder"} <= types
    ids = {n["node_id"] for n in data["nodes"]}
    assert len(ids) == len(data["nodes"])
    assert all(link["source"] in ids and link["target"] in ids for link in data["links"])
    kept = prune(graph)
    assert len(data["links"]) == int(kept.edge_mask.sum())
    # ids as circuit-tracer writes them; the link weights are the adjacency's entries
    feat = next(n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder")
    layer, index, pos = map(int, feat["node_id"].split("_"))
    node = graph.feature_index(layer, pos, index)
    assert feat["activation"] == pytest.approx(float(graph.acts_N[node]))
    assert feat["feature"] == (layer + index) * (layer + index + 1) // 2 + index
    logits = [n for n in data["nodes"] if n["feature_type"] == "logit"]
    assert len(logits) == graph.n_logits and logits[0]["is_target_logit"]
    assert all(n["layer"] == str(graph.n_layers + 1) for n in logits)
    link = data["links"][0]
    s = [n["node_id"] for n in data["nodes"]]
    assert isinstance(link["weight"], float) and link["source"] in s


def test_viewer_is_self_contained(model, graph):
    page = viewer_html(graph_json(graph, model.lm.tokenizer), {"0_1": {"explanation": "cats"}})
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page)
    assert "http://www.w3.org/2000/svg" in page  # the SVG namespace string, not a request
    assert page.count("<script") == 3 and "</script>" in page


def test_memory_estimate_grows_with_batch_and_prompt(model):
    small = estimate_memory(model, 8, 100, 32)
    assert small["total"] == sum(v for k, v in small.items() if k != "total")
    assert estimate_memory(model, 8, 100, 256)["backward_sweep"] > small["backward_sweep"]
    assert estimate_memory(model, 64, 800, 32)["total"] > small["total"]


def test_trace_prompt_writes_every_file(model, tmp_path):
    result = trace_prompt(model, "One two three four", tmp_path / "g", check_features=2)
    names = sorted(p.name for p in (tmp_path / "g").iterdir())
    assert names == ["graph.json", "graph.safetensors", "index.html", "interventions.json"]
    info = result.json["metadata"]["info"]
    assert 0 < info["replacement_score"] < 1 and info["peak_rss_mib"] > 0
    checks = json.loads((tmp_path / "g" / "interventions.json").read_text())
    assert len(checks) == 2
    for check in checks:  # direct effects: exact
        assert check["actual_direct"] == pytest.approx(check["predicted_direct"], abs=1e-4)


def test_cli_attribute(tiny_lm, tiny_model_dir, tmp_path, capsys):
    from saekit.cli import main

    folders = []
    for sae in random_transcoders(tiny_lm):
        sae.cfg.metadata.model_name = str(tiny_model_dir)
        folder = tmp_path / sae.cfg.metadata.hook_name
        sae.save(folder)
        folders.append(str(folder))
    out = tmp_path / "graph"
    code = main(["attribute", *folders[::-1], "--prompt", "Hello there world", "--out", str(out),
                 "--batch-size", "7", "--check-features", "1"])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["active_features"] > 0 and (out / "index.html").exists()
    # the data flags of every other command; the folders record exclude_special_tokens (default
    # on): the BOS position is held, so no feature node sits there unless asked
    graph = Graph.load(str(out / "graph.safetensors"))
    assert graph.info["frozen_positions"] == [0] and not (graph.features_N3[:, 1] == 0).any()
    assert main(["attribute", *folders, "--prompt", "Hello there world", "--out", str(out),
                 "--device", "cpu", "--dtype", "bfloat16", "--no-exclude-special-tokens",
                 "--check-features", "0"]) == 0  # fmt: skip
    graph = Graph.load(str(out / "graph.safetensors"))
    assert graph.info["frozen_positions"] == [] and (graph.features_N3[:, 1] == 0).any()
    capsys.readouterr()
    assert main(["attribute", *folders[:2], "--prompt", "x", "--out", str(out)]) == 2
    assert "missing layers [2, 3]" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_viewer_in_headless_chromium(model, graph, tmp_path):
    data = graph_json(graph, model.lm.tokenizer)
    page = tmp_path / "index.html"
    page.write_text(viewer_html(data))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p'}",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=3000", "--dump-dom",
           page.resolve().as_uri()]  # fmt: skip
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    # the script ran: one drawn node per JSON node, and the target logit is selected
    assert dom.count('class="node') == len(data["nodes"])
    target = next(n for n in data["nodes"] if n["is_target_logit"])
    assert f'id="detail-title">{target["node_id"]}<' in dom
    assert "Inputs (" in dom


def test_tokenize_prepends_bos(model):
    ids = tokenize(model, "hi")
    assert int(ids[0]) == model.lm.bos_token_id
    assert int(tokenize(model, "hi", prepend_bos=False)[0]) != model.lm.bos_token_id
    assert isinstance(ids, torch.Tensor) and Path is not None
