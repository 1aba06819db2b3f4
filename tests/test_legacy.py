"""Restricted loading of the original mats_sae_training `.pt` files."""

from __future__ import annotations

import os
import zipfile

import pytest
import torch

from legacy_files import write_legacy_pt, write_legacy_sparsity
from saekit.io.converters import load_legacy_sparsity, read_mats_pt
from saekit.io.legacy import (
    LegacyFormatError,
    legacy_sae_settings,
    load_legacy_checkpoint,
    safe_torch_load,
)


def test_original_file_loads_without_the_original_module(tmp_path):
    path = tmp_path / "final_sparse_autoencoder_gpt2-small_blocks.8.hook_resid_pre_64.pt"
    state_dict = write_legacy_pt(path, d_in=16, expansion_factor=4)
    assert "sae_training" not in __import__("sys").modules

    ckpt = load_legacy_checkpoint(path)

    assert set(ckpt.state_dict) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    for key, tensor in state_dict.items():
        torch.testing.assert_close(ckpt.state_dict[key], tensor, rtol=0, atol=0)
    assert ckpt.cfg["hook_point"] == "blocks.8.hook_resid_pre"
    assert ckpt.cfg["d_sae"] == 64  # set by the original __post_init__, kept from the pickle
    assert ckpt.cfg["device"] == "cuda"  # torch.device -> str
    assert ckpt.cfg["dtype"] == "float32"  # torch.dtype -> str


def test_old_fields_map_to_saekit_settings(tmp_path):
    path = tmp_path / "sae.pt"
    write_legacy_pt(path, d_in=16, expansion_factor=2, model_name="smollm2-135m",
                    hook_point="blocks.3.hook_resid_pre", hook_point_layer=3,
                    dataset_path="builtin:python-docs", context_size=64, l1_coefficient=1e-3)
    settings = legacy_sae_settings(load_legacy_checkpoint(path))
    assert settings["architecture"] == "relu"
    assert (settings["d_in"], settings["d_sae"]) == (16, 32)
    assert settings["apply_b_dec_to_input"] is True
    meta = settings["metadata"]
    assert meta["model_name"] == "smollm2-135m"
    assert meta["hook_name"] == "blocks.3.hook_resid_pre"
    assert meta["hook_layer"] == 3
    assert meta["dataset_path"] == "builtin:python-docs"
    assert meta["context_size"] == 64
    assert settings["l1_coefficient"] == 1e-3
    assert settings["decoder_norm"] == "unit"  # the original kept decoder rows at unit norm
    assert meta["legacy_config"]["expansion_factor"] == 2


def test_hook_point_template_form_is_understood(tmp_path):
    # Later versions stored `hook_point_template` + layer instead of `hook_point`.
    path = tmp_path / "sae.pt"
    write_legacy_pt(path, hook_point=None, hook_point_layer=5)
    ckpt = load_legacy_checkpoint(path)
    del ckpt.cfg["hook_point"]
    ckpt.cfg["hook_point_template"] = "blocks.{layer}.hook_mlp_out"
    assert legacy_sae_settings(ckpt)["metadata"]["hook_name"] == "blocks.5.hook_mlp_out"


def test_gpu_saved_file_loads_on_cpu(tmp_path):
    path = tmp_path / "gpu.pt"
    state_dict = write_legacy_pt(path, on_gpu=True)
    with zipfile.ZipFile(path) as zf:
        pickle_bytes = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    assert b"cuda:0" in pickle_bytes  # the file really records GPU storages

    ckpt = load_legacy_checkpoint(path)
    assert all(t.device.type == "cpu" for t in ckpt.state_dict.values())
    torch.testing.assert_close(ckpt.state_dict["W_dec"], state_dict["W_dec"], rtol=0, atol=0)


def test_file_calling_os_system_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"cfg": Payload(), "state_dict": {}}, path)

    with pytest.raises(LegacyFormatError) as err:
        load_legacy_checkpoint(path)
    assert "system" in str(err.value)  # names the refused global (posix.system / os.system)
    assert "Nothing was executed" in str(err.value)
    assert not marker.exists()

    # The payload is real: an unrestricted unpickle would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_unknown_class_is_refused_by_name(tmp_path):
    class Stranger:
        pass

    Stranger.__module__, Stranger.__qualname__ = __name__, "Stranger"
    globals()["Stranger"] = Stranger
    path = tmp_path / "odd.pt"
    torch.save({"cfg": Stranger(), "state_dict": {}}, path)
    del globals()["Stranger"]
    with pytest.raises(LegacyFormatError, match=r"test_legacy\.Stranger"):
        safe_torch_load(path, allow_legacy_config=True)


def test_config_class_is_refused_unless_asked_for(tmp_path):
    path = tmp_path / "sae.pt"
    write_legacy_pt(path)
    with pytest.raises(LegacyFormatError, match="sae_training.config.LanguageModelSAERunnerConfig"):
        safe_torch_load(path)


def test_sparsity_file_and_reader(tmp_path):
    path = tmp_path / "final_sparse_autoencoder_gpt2-small_blocks.8.hook_resid_pre_64.pt"
    write_legacy_pt(path, d_in=16, expansion_factor=4)
    log_sparsity = write_legacy_sparsity(
        tmp_path / "final_sparse_autoencoder_gpt2-small_blocks.8.hook_resid_pre_64_log_feature_sparsity.pt", 64
    )
    parts = read_mats_pt(path)
    torch.testing.assert_close(parts.sparsity, log_sparsity, rtol=0, atol=0)
    assert load_legacy_sparsity(tmp_path / (path.stem + "_log_feature_sparsity.pt")).shape == (64,)


def test_wrong_layout_is_explained(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"W_enc": torch.zeros(2, 3)}, path)
    with pytest.raises(LegacyFormatError, match="'cfg' and 'state_dict'"):
        load_legacy_checkpoint(path)


def test_shape_mismatch_with_config_is_reported(tmp_path):
    path = tmp_path / "sae.pt"
    write_legacy_pt(path, d_in=16, expansion_factor=4)
    ckpt = load_legacy_checkpoint(path)
    ckpt.cfg["d_sae"] = 99
    with pytest.raises(LegacyFormatError, match="d_sae=99"):
        legacy_sae_settings(ckpt)
