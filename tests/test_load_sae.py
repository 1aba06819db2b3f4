"""`load_sae` and `load_feature_sparsity` for every kind of spec, offline (HF cache only)."""

from __future__ import annotations

import pytest
import torch

from legacy_files import (
    offline_hub,
    populate_hf_cache,
    reference_relu_sae,
    write_legacy_pt,
    write_legacy_sparsity,
)
from saekit.io.hub import list_releases, resolve_pretrained
from saekit.io.load import load_sae
from saekit.io.sparsity import load_feature_sparsity
from saekit.saes import SAE

D = 16
GPT2_FILE = "final_sparse_autoencoder_gpt2-small_blocks.{L}.hook_resid_pre_24576"


def _x():
    return torch.randn(8, D, generator=torch.Generator().manual_seed(0))


def _check_relu(sae, sd):
    feats, recon = reference_relu_sae(sd, _x())
    torch.testing.assert_close(sae.encode(_x()), feats)
    torch.testing.assert_close(sae.decode(sae.encode(_x())), recon)


def test_registry_has_the_original_gpt2_small_saes():
    assert {"gpt2-small-res-jb", "gpt2-small-res-jb-original"} <= set(list_releases())
    entry = resolve_pretrained("gpt2-small-res-jb-original", "blocks.8.hook_resid_pre")
    assert entry.repo_id == "jbloom/GPT2-Small-SAEs"
    assert entry.path == "final_sparse_autoencoder_gpt2-small_blocks.8.hook_resid_pre_24576.pt"
    assert entry.sparsity == (
        "final_sparse_autoencoder_gpt2-small_blocks.8.hook_resid_pre_24576_log_feature_sparsity.pt"
    )
    lens = resolve_pretrained("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    assert (lens.repo_id, lens.path, lens.format) == (
        "jbloom/GPT2-Small-SAEs-Reformatted", "blocks.8.hook_resid_pre", "saelens")


def test_registry_errors_list_valid_names():
    with pytest.raises(KeyError, match="gpt2-small-res-jb"):
        resolve_pretrained("no-such-release", None)
    with pytest.raises(KeyError, match="blocks.0.hook_resid_pre"):
        resolve_pretrained("gpt2-small-res-jb", "blocks.99.hook_resid_pre")


def test_local_folder_and_legacy_file(tmp_path):
    sae = SAE.create("topk", d_in=D, d_sae=32, k=4)
    sae.save(tmp_path / "kit")
    loaded = load_sae(tmp_path / "kit")
    torch.testing.assert_close(loaded.encode(_x()), sae.encode(_x()))
    assert not loaded.training

    sd = write_legacy_pt(tmp_path / "old.pt", d_in=D, on_gpu=True)
    _check_relu(load_sae(str(tmp_path / "old.pt")), sd)


@pytest.fixture
def gpt2_cache(tmp_path, monkeypatch):
    """A fake HF cache holding layer 8 of jbloom/GPT2-Small-SAEs (tiny weights, real names)."""
    src = tmp_path / "src"
    src.mkdir()
    name = GPT2_FILE.format(L=8)
    sd = write_legacy_pt(src / f"{name}.pt", d_in=D, on_gpu=True)
    log_sparsity = write_legacy_sparsity(src / f"{name}_log_feature_sparsity.pt", 4 * D)
    cache = tmp_path / "hf-cache"
    populate_hf_cache(cache, "jbloom/GPT2-Small-SAEs", {
        f"{name}.pt": src / f"{name}.pt",
        f"{name}_log_feature_sparsity.pt": src / f"{name}_log_feature_sparsity.pt",
    })
    offline_hub(monkeypatch, cache)
    return sd, log_sparsity


def test_release_name_from_offline_cache(gpt2_cache):
    sd, log_sparsity = gpt2_cache
    sae = load_sae("gpt2-small-res-jb-original", "blocks.8.hook_resid_pre")
    _check_relu(sae, sd)
    assert sae.cfg.metadata.hook_name == "blocks.8.hook_resid_pre"
    sparsity = load_feature_sparsity("gpt2-small-res-jb-original", "blocks.8.hook_resid_pre")
    torch.testing.assert_close(sparsity, log_sparsity)


def test_repo_id_and_hf_path_forms(gpt2_cache):
    sd, log_sparsity = gpt2_cache
    name = GPT2_FILE.format(L=8)
    _check_relu(load_sae("jbloom/GPT2-Small-SAEs", "blocks.8.hook_resid_pre"), sd)  # registered repo
    _check_relu(load_sae(f"hf://jbloom/GPT2-Small-SAEs/{name}.pt"), sd)
    torch.testing.assert_close(load_feature_sparsity(f"hf://jbloom/GPT2-Small-SAEs/{name}.pt"), log_sparsity)


def test_offline_miss_is_an_error_not_a_download(gpt2_cache):
    with pytest.raises(FileNotFoundError, match="cannot be reached.*HF cache does not hold it"):
        load_sae("gpt2-small-res-jb-original", "blocks.3.hook_resid_pre")


def test_unreachable_hub_fails_fast_with_one_line(tmp_path, monkeypatch):
    """No HF_HUB_OFFLINE, but nothing answers: one line, no retries for tens of seconds."""
    import time

    import huggingface_hub.constants as constants

    from saekit.io import hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert hub.hub_reachable() is False
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        load_sae("someone/no-such-sae")
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "\n" not in message and "someone/no-such-sae: not a local path" in message


def test_hub_folder_from_cache(tmp_path, monkeypatch):
    sae = SAE.create("relu", d_in=D, d_sae=32, metadata={"hook_name": "blocks.1.hook_resid_post"})
    sparsity = -torch.rand(32)
    sae.save(tmp_path / "saved", sparsity=sparsity)
    cache = tmp_path / "cache"
    populate_hf_cache(cache, "someone/my-saes", {"layer1": tmp_path / "saved"})
    offline_hub(monkeypatch, cache)

    for loaded in (load_sae("hf://someone/my-saes/layer1"), load_sae("someone/my-saes", "layer1")):
        torch.testing.assert_close(loaded.encode(_x()), sae.encode(_x()))
        assert loaded.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    torch.testing.assert_close(load_feature_sparsity("hf://someone/my-saes/layer1"), sparsity)
    torch.testing.assert_close(load_feature_sparsity(tmp_path / "saved"), sparsity)


def test_unknown_spec_lists_releases(tmp_path):
    with pytest.raises(FileNotFoundError, match="gpt2-small-res-jb"):
        load_sae("definitely-not-a-release")


def test_a_saekit_folder_with_a_misspelled_key_is_an_error_not_a_default(tmp_path):
    import json

    import pytest

    from saekit import SAE, load_sae

    SAE.create("topk", d_in=4, d_sae=8, k=2).save(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    cfg["aux_coeficient"] = 0.5  # typo: must not fall back to a lenient reader
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="aux_coeficient"):
        load_sae(tmp_path / "sae")
