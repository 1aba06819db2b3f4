"""`saekit eval --suite` end to end on the tiny model: two SAEs side by side, shared passes."""

from __future__ import annotations

import json
import random

import pytest
import torch

from saekit.cli import main
from saekit.evals.report import format_comparison
from saekit.evals.suite import SuiteSettings
from saekit.saes import SAE

HOOK = "blocks.2.hook_resid_pre"


@pytest.fixture()
def sweep(tmp_path, tiny_model_dir):
    """A sweep folder with two SAEs on one hook, a labelled JSONL and a small core text."""
    meta = {"model_name": str(tiny_model_dir), "hook_name": HOOK, "context_size": 32}
    torch.manual_seed(0)
    for k in (4, 16):
        SAE.create("topk", d_in=64, d_sae=128, k=k, metadata=meta).save(
            tmp_path / "sweep" / f"k{k}"
        )
    rng = random.Random(0)
    vocab = {"a": ["apple", "ant", "art", "arm"], "b": ["bear", "bob", "bird", "bus"],
             "c": ["cat", "cow", "cup", "car"]}  # fmt: skip
    rows = [{"text": " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))), "label": c}
            for c, words in vocab.items() for _ in range(40)]  # fmt: skip
    (tmp_path / "toy.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    from pydoc_data.topics import topics

    (tmp_path / "core.txt").write_text("\n\n".join(topics[k] for k in sorted(topics)[:60]))
    return tmp_path


def test_eval_suite_cli_two_saes(sweep, monkeypatch, capsys):
    monkeypatch.setenv("SAEKIT_CACHE", str(sweep / "cache"))
    args = [
        "eval", str(sweep / "sweep"), "--suite", "core,probing,absorption", "--datasets", str(sweep / "toy.jsonl"),
        "--train-per-class", "12", "--test-per-class", "6", "--k", "1,2", "--tokens", "256",
        "--dataset", str(sweep / "core.txt"), "--words", "150", "--icl", "3",
        "--words-per-prompt", "4", "--absorption-max-k", "3", "--device", "cpu", "--out", str(sweep / "out"),
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "k16" in printed and "k4" in printed and "residual (baseline)" in printed
    reports = {k: json.loads((sweep / "out" / f"{k}.json").read_text()) for k in ("k4", "k16")}
    for report in reports.values():
        assert set(report) >= {"core", "sparse_probing", "absorption_first_letter", "timings_s"}
        core = report["core"]["eval_result_metrics"]
        assert core["model_performance_preservation"]["ce_loss_score"] is not None or True
        assert report["core"]["saekit"]["tokens"] >= 256
        probing = report["sparse_probing"]["eval_result_metrics"]
        assert set(probing["sae"]) == {"sae_test_accuracy", "sae_top_1_test_accuracy",
                                       "sae_top_2_test_accuracy"}  # fmt: skip
        assert all(0.0 <= v <= 1.0 for v in probing["llm"].values())
        details = report["absorption_first_letter"]["eval_result_details"]
        assert [d["first_letter"] for d in details] == list("abcdefghijklmnopqrstuvwxyz")
    # the residual baselines are shared: identical for both SAEs
    assert (reports["k4"]["sparse_probing"]["eval_result_metrics"]["llm"]
            == reports["k16"]["sparse_probing"]["eval_result_metrics"]["llm"])  # fmt: skip
    assert reports["k4"]["core"]["saekit"]["l0"] == pytest.approx(4)
    assert reports["k16"]["core"]["saekit"]["l0"] == pytest.approx(16)
    for png in ("frontier_l0_ce_loss_recovered.png", "probing_accuracy_vs_k.png",
                "absorption_per_letter.png", "eval_suite_comparison.txt"):  # fmt: skip
        assert (sweep / "out" / png).stat().st_size > 0
    # a rerun of probing reads the cached pooled activations: no model forward
    from saekit.models import LanguageModel

    monkeypatch.setattr(LanguageModel, "run_to_hooks", lambda *a, **k: 1 / 0)
    assert main(args + ["--suite", "probing", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    del again["k4"]["sparse_probing"]["timings_s"], reports["k4"]["sparse_probing"]["timings_s"]
    assert again["k4"]["sparse_probing"] == reports["k4"]["sparse_probing"]


def test_suite_errors_name_the_setting(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown suite.*core, probing, absorption"):
        SuiteSettings(suites=("core", "autointerp"))
    assert main(["eval-suite", str(tmp_path / "nothing")]) == 2
    assert main(["eval", str(tmp_path), "--suite", "core,autointerp"]) == 2
    assert "--suite autointerp: choose from core, probing, absorption or all" in (
        capsys.readouterr().err
    )


def test_format_comparison_puts_saes_side_by_side():
    reports = {
        name: {"core": {"saekit": {"l0": l0, "explained_variance": ev}},
               "sparse_probing": {"eval_config": {"k_values": [1]}, "eval_result_metrics": {
                   "llm": {"llm_test_accuracy": 0.9, "llm_top_1_test_accuracy": 0.7},
                   "sae": {"sae_test_accuracy": acc, "sae_top_1_test_accuracy": acc - 0.1}}}}
        for name, l0, ev, acc in (("k16", 16.0, 0.8, 0.85), ("k64", 64.0, 0.9, 0.88))
    }  # fmt: skip
    table = format_comparison(reports).splitlines()
    assert table[0].split() == ["metric", "k16", "k64", "residual", "(baseline)"]
    row = next(line for line in table if line.startswith("probe acc., top 1"))
    assert row.split()[-3:] == ["0.750", "0.780", "0.700"]
    assert any(line.startswith("L0") and "16.000" in line and "64.000" in line for line in table)


def test_sweep_names_drop_the_shared_prefix(tmp_path):
    from saekit.evals.suite_cli import sae_names

    folders = [tmp_path / f"blocks.3.hook_resid_pre-topk-k{k}" for k in (16, 128)]
    assert list(sae_names(folders)) == ["k16", "k128"]
    same_leaf = [tmp_path / "a" / "sae", tmp_path / "b" / "sae"]
    assert list(sae_names(same_leaf)) == ["a/sae", "b/sae"]


def test_suite_names_and_aliases():
    from saekit.cli import build_parser
    from saekit.evals.suite import SUITES
    from saekit.evals.suite_cli import chosen_suites

    parser = build_parser()
    parse = lambda *argv: parser.parse_args(list(argv))  # noqa: E731
    assert chosen_suites(parse("eval", "x")) == ("core",)
    assert chosen_suites(parse("eval-suite", "x")) == SUITES  # the alias runs everything
    assert chosen_suites(parse("eval", "x", "--suite", "all")) == SUITES
    assert chosen_suites(parse("eval", "x", "--suite", "absorption,core,core")) == (
        "absorption",
        "core",
    )


def test_data_flags_override_every_saes_record(tmp_path):
    from saekit.cli import build_parser
    from saekit.evals.suite_cli import _apply_data_flags

    def saes(*models):
        return {
            f"s{i}": SAE.create(
                "relu", d_in=8, d_sae=16, metadata={"model_name": m, "hook_name": HOOK}
            )
            for i, m in enumerate(models)
        }

    folders = {f"s{i}": tmp_path / f"s{i}" for i in range(2)}
    parse = lambda *flags: build_parser().parse_args(["eval", "x", *flags])  # noqa: E731
    with pytest.raises(ValueError, match=r"different models \['a', 'b'\]: pass --model"):
        _apply_data_flags(saes("a", "b"), folders, parse())
    two = saes("a", "b")
    flags = ("--model", "c", "--hook", "blocks.1.hook_resid_pre", "--no-prepend-bos",
             "--dataset", "my.txt", "--forward-rows", "8")  # fmt: skip
    assert _apply_data_flags(two, folders, parse(*flags)) == ("c", "float32", 8)
    from saekit.data.provenance import Provenance

    for sae in two.values():
        prov, _ = Provenance.from_sae(sae)
        assert (prov.model, prov.hooks, prov.prepend_bos, prov.dataset) == (
            "c", ("blocks.1.hook_resid_pre",), False, "my.txt")  # fmt: skip
    unnamed = {"s0": SAE.create("relu", d_in=8, d_sae=16, metadata={"hook_name": HOOK})}
    with pytest.raises(ValueError, match="names no model.*pass --model"):
        _apply_data_flags(unnamed, folders, parse())


def test_saebench_core_names_take_kl_div_score_when_present():
    from saekit.evals.suite import saebench_core_names

    m = {"kl_div": 0.3, "ce_loss_recovered": 0.9, "ce_loss_zero_ablation": 9.0,
         "ce_loss_spliced": 4.0, "ce_loss_clean": 3.5, "explained_variance": 0.8, "mse": 0.1,
         "cos_sim": 0.9, "l2_ratio": 0.95, "l0": 32.0, "dead_fraction": 0.25}  # fmt: skip
    names = saebench_core_names(m)
    assert names["model_behavior_preservation"] == {"kl_div_with_sae": 0.3}
    assert names["misc_metrics"]["frac_alive"] == 0.75
    assert names["model_performance_preservation"]["ce_loss_score"] == 0.9
    with_score = saebench_core_names(m | {"kl_div_score": 0.97})
    assert with_score["model_behavior_preservation"]["kl_div_score"] == 0.97


def test_a_folder_of_plain_saes_is_a_sweep_and_one_of_transcoders_a_replacement_model(
    tmp_path, monkeypatch
):
    import saekit.evals.cli as eval_cli
    import saekit.evals.dictionaries as dictionaries

    calls = []
    monkeypatch.setattr(eval_cli, "run_suite_command", lambda args: calls.append("suite") or 0)
    monkeypatch.setattr(eval_cli, "run_core_eval", lambda args: calls.append("core") or 0)
    monkeypatch.setattr(dictionaries, "run_dictionary_eval", lambda *a: calls.append("dict") or 0)
    for k in (4, 16):
        SAE.create("topk", d_in=8, d_sae=16, k=k, metadata={"hook_name": HOOK}).save(
            tmp_path / "sweep" / f"k{k}"
        )
    meta = {"hook_name": "blocks.1.ln2.hook_normalized", "hook_name_out": "blocks.1.hook_mlp_out"}
    SAE.create("relu", d_in=8, d_sae=16, metadata=meta).save(tmp_path / "tc" / "blocks.1")
    assert main(["eval", str(tmp_path / "sweep")]) == 0
    assert main(["eval", str(tmp_path / "tc")]) == 0
    assert main(["eval", str(tmp_path / "sweep" / "k4")]) == 0
    assert main(["eval", str(tmp_path / "sweep" / "k4"), "--suite", "core"]) == 0
    assert calls == ["suite", "dict", "core", "suite"]
