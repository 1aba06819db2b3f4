"""`saekit export neuronpedia`: batch files that follow the schema derived from SAEDashboard's
exporter, with numbers that agree with a direct computation (tiny model)."""

from __future__ import annotations

import json

import pytest
import torch

from saekit.cli import main
from saekit.data.provenance import Provenance, token_batches
from saekit.export.neuronpedia import schema, validate_batch
from saekit.saes import SAE

jsonschema = pytest.importorskip("jsonschema")
HOOK = "blocks.2.hook_resid_pre"


@pytest.fixture(scope="module")
def export(tiny_model_dir, tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("np")
    meta = {"model_name": str(tiny_model_dir), "hook_name": HOOK,
            "dataset_path": "builtin:python-docs", "context_size": 32}  # fmt: skip
    SAE.create("relu", d_in=64, d_sae=48, metadata=meta).save(root / "sae")
    (root / "expl.json").write_text(json.dumps({"1": "dots and commas", "4": "the word 'the'"}))
    argv = ["export", "neuronpedia", str(root / "sae"), "--features", "0:6", "--tokens", "3000",
            "--batch-size", "4", "--out", str(root / "out"), "--explanations", str(root / "expl.json"),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return root


def test_batches_follow_the_schema(export):
    jsonschema.Draft202012Validator.check_schema(schema())
    batches = [json.loads((export / "out" / f"batch-{i}.json").read_text()) for i in (0, 1)]
    for batch in batches:
        validate_batch(batch)
        assert (batch["layer"], batch["sae_set"]) == (2, "res-saekit")
    assert [f["feature_index"] for b in batches for f in b["features"]] == list(range(6))
    broken = json.loads(json.dumps(batches[0]))
    del broken["features"][0]["activations"][0]["values"]
    with pytest.raises(jsonschema.ValidationError):
        validate_batch(broken)


def test_numbers_agree_with_a_direct_pass(export, tiny_lm):
    from saekit import load_sae

    sae = load_sae(export / "sae")
    prov, _ = Provenance.from_sae(sae)
    feats, seen = [], 0
    torch.set_grad_enabled(False)
    for ids_BT, keep_BT in token_batches(prov, tiny_lm.tokenizer, 32):
        acts = sae.encode(tiny_lm.run_to_hooks(ids_BT, [HOOK])[HOOK])[..., :6]
        feats.append(acts[keep_BT])
        seen += int(keep_BT.sum())
        if seen >= 3000:
            break
    feats_NF = torch.cat(feats)
    torch.set_grad_enabled(True)
    batch = json.loads((export / "out" / "batch-0.json").read_text())
    for f in batch["features"]:
        i = f["feature_index"]
        assert f["frac_nonzero"] == pytest.approx(float((feats_NF[:, i] > 0).float().mean()), abs=1e-6)
        top = f["activations"][0]
        assert top["bin_min"] == -1 and len(top["tokens"]) == len(top["values"])
        assert max(top["values"]) == pytest.approx(float(feats_NF[:, i].max()), abs=1e-3)
        assert sum(f["freq_hist_data_bar_heights"]) == int((feats_NF[:, i] > 0).sum())
        assert f["pos_values"] == sorted(f["pos_values"], reverse=True) and len(f["pos_str"]) == 10
        assert sum(f["logits_hist_data_bar_heights"]) == tiny_lm.unembed_matrix().shape[1]
        samples = [a for a in f["activations"] if a["bin_min"] >= 0]
        assert samples and all(  # the example token's value lies in its interval
            any(a["bin_min"] - 1e-3 <= v <= a["bin_max"] + 1e-3 for v in a["values"]) for a in samples
        )


def test_settings_and_explanations(export):
    settings = json.loads((export / "out" / "run_settings.json").read_text())
    assert settings["hook_name"] == HOOK and settings["d_sae"] == 48
    assert settings["provenance"]["dataset"] == "builtin:python-docs"
    assert settings["batch_files"] == ["batch-0.json", "batch-1.json"]
    lines = [json.loads(x) for x in (export / "out" / "explanations.jsonl").read_text().splitlines()]
    assert [(x["index"], x["description"]) for x in lines] == [("1", "dots and commas"), ("4", "the word 'the'")]
    assert lines[0]["layer"] == "2-res-saekit"


def test_docs_example_follows_the_schema():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "docs" / "examples" / "neuronpedia"
    files = sorted(folder.glob("batch-*.json"))
    assert files, "the checked-in example export is missing"
    for path in files:
        validate_batch(json.loads(path.read_text()))
