"""`saekit eval` on a tiny model and a tiny SAE folder."""

from __future__ import annotations

import json

import pytest
import torch

from saekit.cli import main
from saekit.data import TokenWindows, iter_documents, iter_token_batches
from saekit.evals import METRIC_KEYS, evaluate_sae
from saekit.saes import SAE

HOOK = "blocks.2.hook_resid_pre"


@pytest.fixture(autouse=True)
def eval_cache(tmp_path, monkeypatch):
    """Evaluation baselines go to a folder of the test, not the user's cache."""
    monkeypatch.setenv("SAEKIT_EVAL_CACHE", str(tmp_path / "eval-cache"))
    return tmp_path / "eval-cache"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """60 paragraphs of real English text: documents 20, 40, 60 are held back."""
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("data") / "docs.txt"
    paragraphs = [topics[key].replace("\n\n", "\n") for key in sorted(topics)[:60]]
    path.write_text("\n\n".join(paragraphs))
    return path


def save_sae(folder, d_in=64, **meta):
    torch.manual_seed(0)
    sae = SAE.create("relu", d_in=d_in, d_sae=128, metadata={"hook_name": HOOK, **meta})
    sae.save(folder)
    return folder


@pytest.fixture(scope="module")
def sae_folder(tmp_path_factory, tiny_model_dir, text_file):
    folder = tmp_path_factory.mktemp("sae") / "sae"
    return save_sae(
        folder, model_name=str(tiny_model_dir), dataset_path=str(text_file), context_size=32
    )


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def heldout_batches(text_file, tokenizer, exclude_special_tokens):
    """Held-back windows built by hand (every 20th document, BOS first), as training held them."""
    docs = iter_documents(str(text_file), holdout_every=20, holdout=True)
    windows = TokenWindows(docs, tokenizer, 32, exclude_special_tokens=exclude_special_tokens)
    return iter_token_batches(windows, 2)


def test_json_matches_evaluate_sae(sae_folder, tiny_lm, text_file, capsys):
    code, out, err = run(
        ["eval", str(sae_folder), "--json", "--tokens", "64", "--forward-rows", "2"], capsys
    )
    assert code == 0, err
    report = json.loads(out)
    assert set(METRIC_KEYS) <= set(report)
    assert report["hook_name"] == HOOK and report["dataset"] == str(text_file)
    assert report["tokens"] >= 64
    assert not (sae_folder / "feature_density.png").exists()  # --json without --out: no files

    # The folder does not record exclude_special_tokens (as SAELens folders do not): BOS is
    # kept clean by default and the report says so. The numbers are those of the Python API
    # on the held-back documents with that convention (and differ from splicing at BOS).
    assert report["exclude_special_tokens"] is True
    assert report["exclude_special_tokens_from"] == "default"
    sae = SAE.load(sae_folder)
    expected = evaluate_sae(sae, tiny_lm, heldout_batches(text_file, tiny_lm.tokenizer, True), max_tokens=64)
    at_bos = evaluate_sae(sae, tiny_lm, heldout_batches(text_file, tiny_lm.tokenizer, False), max_tokens=64)
    for key in METRIC_KEYS:
        assert report[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    assert report["explained_variance"] != pytest.approx(at_bos["explained_variance"], rel=1e-3)


def test_special_token_convention_is_a_flag_and_is_reported(sae_folder, tiny_lm, text_file, capsys):
    argv = ["eval", str(sae_folder), "--tokens", "64", "--forward-rows", "2"]
    code, out, err = run([*argv, "--json", "--no-exclude-special-tokens"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["exclude_special_tokens"] is False and report["exclude_special_tokens_from"] == "flag"
    sae = SAE.load(sae_folder)
    expected = evaluate_sae(sae, tiny_lm, heldout_batches(text_file, tiny_lm.tokenizer, False), max_tokens=64)
    assert report["explained_variance"] == pytest.approx(expected["explained_variance"], rel=1e-6)
    code, out, err = run([*argv, "--exclude-special-tokens"], capsys)
    assert code == 0, err
    assert "special tokens excluded (BOS/EOS/pad left clean, not counted); set by flag" in out


def test_table_and_histogram(sae_folder, tmp_path, capsys):
    out_dir = tmp_path / "report"
    code, out, err = run(
        ["eval", str(sae_folder), "--tokens", "32", "--forward-rows", "1", "--out", str(out_dir)],
        capsys,
    )
    assert code == 0, err
    assert "CE loss recovered" in out and "explained variance" in out
    assert "special tokens excluded" in out and "the SAE folder does not record it" in out
    png = (out_dir / "feature_density.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    saved = json.loads((out_dir / "eval.json").read_text())
    assert saved["tokens"] >= 32 and "kl_div" in saved


def test_missing_model(tmp_path, text_file, capsys):
    folder = save_sae(tmp_path / "no_model", dataset_path=str(text_file), context_size=32)
    code, _, err = run(["eval", str(folder), "--json"], capsys)
    assert code == 2 and "names no model" in err and "--model" in err


def test_model_that_cannot_load(tmp_path, sae_folder, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "no-such-model"
    code, _, err = run(["eval", str(sae_folder), "--json", "--model", str(missing)], capsys)
    assert code == 2 and "cannot load model" in err and "no-such-model" in err


def test_width_mismatch(tmp_path, tiny_model_dir, text_file, capsys):
    folder = save_sae(
        tmp_path / "wide",
        d_in=48,
        model_name=str(tiny_model_dir),
        dataset_path=str(text_file),
        context_size=32,
    )
    code, _, err = run(["eval", str(folder), "--json", "--tokens", "16"], capsys)
    assert code == 2 and "d_in=48" in err and HOOK in err


def test_not_an_sae_folder(tmp_path, capsys):
    code, _, err = run(["eval", str(tmp_path)], capsys)
    assert code == 2 and "no cfg.json" in err


def test_nan_weights_are_refused_and_never_give_exit_0(tmp_path, tiny_model_dir, text_file, capsys):
    """NaN weights gave an exit-0 evaluation with null metrics."""
    from safetensors.torch import load_file, save_file

    folder = save_sae(tmp_path / "nan", model_name=str(tiny_model_dir), dataset_path=str(text_file),
                      context_size=32)
    weights = load_file(str(folder / "sae_weights.safetensors"))
    weights["b_dec"][0] = float("nan")
    save_file(weights, str(folder / "sae_weights.safetensors"))
    code, _, err = run(["eval", str(folder), "--json", "--tokens", "16"], capsys)
    assert code == 2 and "'b_dec' holds 1 NaN/inf value(s)" in err

    from saekit.evals import cli

    sae = SAE.load(folder, check_weights=False)  # loaded anyway: the evaluation must say so
    monkey_load = SAE.load
    try:
        SAE.load = staticmethod(lambda *a, **k: sae)
        code, out, err = run(["eval", str(folder), "--json", "--tokens", "16"], capsys)
    finally:
        SAE.load = monkey_load
    assert code == 3 and "not finite" in err and json.loads(out)["mse"] is None
    assert cli.MUST_BE_FINITE
