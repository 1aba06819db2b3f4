"""`saekit convert`, `saekit info`, `saekit push --dry-run` through the real CLI parser."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from legacy_files import reference_relu_sae, write_legacy_pt, write_legacy_sparsity
from saekit.cli import main
from saekit.saes import SAE


def test_convert_legacy_then_info(tmp_path, capsys):
    src = tmp_path / "final_sparse_autoencoder_gpt2-small_blocks.8.hook_resid_pre_64.pt"
    sd = write_legacy_pt(src, d_in=16, expansion_factor=4)
    write_legacy_sparsity(tmp_path / (src.stem + "_log_feature_sparsity.pt"), 64)

    assert main(["convert", str(src), str(tmp_path / "kit")]) == 0
    x = torch.randn(4, 16)
    sae = SAE.load(tmp_path / "kit")
    torch.testing.assert_close(sae.encode(x), reference_relu_sae(sd, x)[0])
    assert (tmp_path / "kit" / "sparsity.safetensors").is_file()

    capsys.readouterr()
    assert main(["info", str(tmp_path / "kit")]) == 0
    info = _table(capsys.readouterr().out)
    assert info["architecture"] == "relu" and info["decoder_norm"] == "unit"
    assert (info["d_in"], info["d_sae"]) == ("16", "64")
    assert info["model"] == "gpt2-small" and info["hook"] == "blocks.8.hook_resid_pre"
    assert info["source format"] == "saekit (converted from mats_pt)"

    assert main(["info", str(src)]) == 0
    assert _table(capsys.readouterr().out)["source format"] == "mats_pt"


def _table(out: str) -> dict[str, str]:
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines() if line.strip())


def test_convert_to_sparsify_and_back(tmp_path):
    sae = SAE.create("topk", d_in=8, d_sae=24, k=3, metadata={"hook_name": "layers.2"})
    sae.save(tmp_path / "kit")
    assert main(["convert", str(tmp_path / "kit"), str(tmp_path / "sp" / "layers.2"), "--to", "sparsify"]) == 0
    assert json.loads((tmp_path / "sp" / "layers.2" / "cfg.json").read_text())["k"] == 3
    assert main(["convert", str(tmp_path / "sp" / "layers.2"), str(tmp_path / "kit2")]) == 0
    x = torch.randn(5, 8)
    torch.testing.assert_close(SAE.load(tmp_path / "kit2").encode(x), sae.encode(x))


def test_convert_errors_are_reported(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "not an SAE folder" in capsys.readouterr().err


def test_convert_refuses_an_existing_output_unless_forced(tmp_path, capsys):
    """It used to overwrite cfg.json and leave the old weights beside the new ones."""
    SAE.create("topk", d_in=8, d_sae=24, k=3).save(tmp_path / "a")
    SAE.create("relu", d_in=8, d_sae=16).save(tmp_path / "b")
    (tmp_path / "b" / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--to", "sparsify"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == before
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--to", "sparsify", "--force"]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["cfg.json", "sae.safetensors"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_a_failed_convert_leaves_nothing(tmp_path, capsys, monkeypatch):
    from saekit.io import converters

    SAE.create("topk", d_in=8, d_sae=24, k=3).save(tmp_path / "a")

    def broken(parts, dst):
        (dst / "cfg.json").write_text("{}")
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(converters.__dict__, "write_sparsify", broken)
    with pytest.raises(OSError, match="No space"):
        converters.convert(tmp_path / "a", tmp_path / "out", to="sparsify")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_push_dry_run_stages_folder_and_card(tmp_path, capsys):
    sae = SAE.create("topk", d_in=8, d_sae=24, k=3,
                     metadata={"model_name": "smollm2-135m", "hook_name": "blocks.3.hook_resid_pre"})
    sae.save(tmp_path / "run", sparsity=-torch.rand(24))
    (tmp_path / "run" / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "l0": 9.0}) + "\n" + json.dumps({"step": 2, "l0": 3.0, "fvu": 0.25}) + "\n")
    (tmp_path / "run" / "checkpoints").mkdir()

    stage = tmp_path / "stage"
    assert main(["push", str(tmp_path / "run"), "me/my-sae", "--dry-run", str(stage)]) == 0
    assert sorted(p.name for p in stage.iterdir()) == [
        "README.md", "cfg.json", "metrics.jsonl", "sae_weights.safetensors", "sparsity.safetensors"]

    card = (stage / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["library_name"] == "saekit"
    assert header["base_model"] == "smollm2-135m"
    assert header["sae"]["hook_name"] == "blocks.3.hook_resid_pre"
    assert header["sae"]["architecture"] == "topk" and header["sae"]["k"] == 3
    assert header["sae"]["metrics"] == {"step": 2, "l0": 3.0, "fvu": 0.25}  # the last line
    assert 'saekit.load_sae("hf://me/my-sae")' in card
    # a second dry run into the same folder is refused (it used to overwrite README.md)
    (stage / "README.md").write_text("my own card")
    assert main(["push", str(tmp_path / "run"), "me/my-sae", "--dry-run", str(stage)]) == 2
    assert (stage / "README.md").read_text() == "my own card"
    assert main(["push", str(tmp_path / "run"), "me/my-sae", "--dry-run", str(stage), "--force"]) == 0
    assert (stage / "README.md").read_text() == card
    # the staged folder is itself a loadable SAE
    x = torch.randn(2, 8)
    torch.testing.assert_close(SAE.load(stage).encode(x), sae.encode(x))


def test_info_shows_what_the_folder_records_about_quality(tmp_path, capsys):
    sae = SAE.create("relu", d_in=4, d_sae=8)
    density = torch.tensor([1e-3, 0, 0.1, 0.2, 0, 1e-2, 1e-4, 0.5], dtype=torch.float64)
    sae.save(tmp_path / "s", sparsity=torch.log10(density + 1e-10).float())
    (tmp_path / "s" / "eval.json").write_text(json.dumps({"l0": 12.5, "explained_variance": 0.91}))
    assert main(["info", str(tmp_path / "s")]) == 0
    info = _table(capsys.readouterr().out)
    assert info["eval l0"] == "12.5" and info["eval explained_variance"] == "0.91"
    assert info["training density"].startswith("median 10^-3.00") and "25.0% never fired" in info["training density"]
