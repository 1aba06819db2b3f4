"""`saekit eval` on a run folder of per-layer transcoders, a CLT folder and a crosscoder:
per-layer numbers against the single-SAE evaluation of each layer, per-source FVU against a
float64 computation from the model's activations."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import small_train_config
from saekit.cli import main
from saekit.training.run import train


@pytest.fixture(autouse=True)
def eval_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEKIT_EVAL_CACHE", str(tmp_path / "eval-cache"))


RUN = dict(hooks=(), expansion_factor=1, ks=(4,), tokens=2048, eval_tokens=0, context=24)


def test_transcoder_set_per_layer_numbers_equal_each_layers_own_evaluation(
    tiny_model_dir, tmp_path, capsys
):
    result = train(small_train_config(tiny_model_dir, tmp_path / "run", transcoders="1:3", **RUN))
    assert main(["eval", str(tmp_path / "run"), "--tokens", "300", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "transcoders"
    assert report["hook_names"] == ["blocks.1.ln2.hook_normalized", "blocks.2.ln2.hook_normalized"]
    for i, name in enumerate(report["hook_names"]):
        assert main(["eval", str(result.sae_folders[name]), "--tokens", "300", "--json"]) == 0
        single = json.loads(capsys.readouterr().out)
        assert single["tokens"] == report["tokens"]  # the same windows: > one batch of rows
        assert report["fvu_per_layer"][i] == pytest.approx(single["fvu"], rel=1e-6)
        assert report["l0_per_layer"][i] == pytest.approx(single["l0"], rel=1e-6)
        assert report["ce_loss_clean"] == pytest.approx(single["ce_loss_clean"], rel=1e-5)
    assert report["ce_loss_clean"] <= report["ce_loss_replaced"] + 1.0  # a sane model
    assert (tmp_path / "run" / "eval.json").exists() is False  # --json writes nothing


def test_clt_folder_reports_the_replacement_model(tiny_model_dir, tmp_path, capsys):
    from saekit.data.provenance import Provenance, token_batches
    from saekit.evals.replacement import Replacement, evaluate_replacement
    from saekit.models import load_model
    from saekit.saes.clt import load_clt

    cfg = small_train_config(
        tiny_model_dir, tmp_path / "run", transcoders="1:4", cross_layer=True, **RUN
    )
    folder = train(cfg).sae_folders["clt"]
    assert main(["eval", str(folder), "--tokens", "200", "--out", str(tmp_path / "ev")]) == 0
    table = capsys.readouterr().out
    assert "ce_loss_recovered" in table and "blocks.3.ln2.hook_normalized" in table
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert main(["eval", str(tmp_path / "run"), "--tokens", "200"]) == 2  # the run, not its CLT
    assert f"saekit eval {folder}" in capsys.readouterr().err
    clt = load_clt(folder)
    prov, _ = Provenance.from_sae(clt)
    lm = load_model(str(tiny_model_dir))
    extra = clt.cfg.metadata.extra
    rep = Replacement.of_clt(clt, extra["hook_names"], extra["hook_names_out"])
    want = evaluate_replacement(rep, lm, token_batches(prov, lm.tokenizer, 8, "heldout"), 200)
    for key in ("ce_loss_replaced", "ce_loss_recovered", "kl_div", "tokens"):
        assert report[key] == pytest.approx(want[key], rel=1e-6), key
    assert len(report["fvu_per_layer"]) == 3


def test_crosscoder_fvu_per_source_against_float64(tiny_model_dir, tmp_path, capsys):
    from saekit.data.provenance import Provenance, token_batches
    from saekit.models import load_model
    from saekit.saes.crosscoder import Crosscoder

    hooks = ("blocks.1.hook_resid_pre", "blocks.3.hook_resid_pre")
    cfg = small_train_config(
        tiny_model_dir, tmp_path / "run", **{**RUN, "hooks": hooks}, crosscoder=True
    )
    folder = train(cfg).sae_folders["crosscoder"]
    assert main(["eval", str(folder), "--tokens", "150", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    cc = Crosscoder.load(folder)
    prov, _ = Provenance.from_sae(cc)
    lm = load_model(str(tiny_model_dir))
    xs, n = [], 0
    for ids, keep in token_batches(prov, lm.tokenizer, 8, "heldout"):
        acts = lm.run_to_hooks(ids, list(hooks))
        xs.append(torch.stack([acts[h][keep] for h in hooks], 1))
        n += xs[-1].shape[0]
        if n >= 150:
            break
    x = torch.cat(xs)[:150]
    assert report["tokens"] == 150
    with torch.no_grad():
        y = cc.decode(cc.encode(x)).double()
    x = x.double()
    for s in range(2):
        want = ((y[:, s] - x[:, s]) ** 2).sum() / ((x[:, s] - x[:, s].mean(0)) ** 2).sum()
        assert report["fvu_per_source"][s] == pytest.approx(float(want), rel=1e-6)
    assert report["l0"] == pytest.approx(4.0)


def test_diff_summary_classes_by_hand():
    from saekit.evals.crosscoder import diff_summary
    from saekit.saes.crosscoder import Crosscoder, CrosscoderConfig

    cc = Crosscoder(CrosscoderConfig(n_sources=2, d_in=2, d_sae=6, k=1))
    with torch.no_grad():
        cc.W_dec.copy_(torch.tensor([
            [[1.0, 0.0], [0.0, 0.0]],  # r = 0: base only
            [[0.0, 0.0], [0.0, 2.0]],  # r = 1: other only
            [[1.0, 0.0], [1.0, 0.0]],  # r = 0.5: shared
            [[3.0, 0.0], [1.0, 0.0]],  # r = 0.25: between
            [[0.0, 0.0], [0.0, 0.0]],  # dead (no decoder)
            [[1.0, 0.0], [1.0, 0.0]],  # shared, but never fired: dead
        ]))  # fmt: skip
    cc.cfg.metadata.extra["norm_scales"] = [1.0, 1.0]
    fired = torch.tensor([True, True, True, True, True, False])
    got = diff_summary(cc, fired)
    assert (got["a_only"], got["b_only"], got["shared"], got["between"], got["dead"]) == (
        1,
        1,
        1,
        1,
        2,
    )
    assert got["b_only_features"] == [1] and got["a_only_features"] == [0]
    assert sum(got["histogram_counts"]) == 4
    cc.cfg.metadata.extra["norm_scales"] = [1.0, 3.0]  # decoders compare in training units
    r = diff_summary(cc, fired)["relative_norm"]
    assert r[2].item() == pytest.approx(0.75) and r[3].item() == pytest.approx(0.5)
