"""Converters between saekit, SAELens, sparsify, dictionary_learning and legacy .pt files.

Every format's forward pass is written out here in plain torch, from that library's own
definition, and compared against saekit's SAE after conversion.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from legacy_files import reference_relu_sae, write_legacy_pt, write_legacy_sparsity
from saekit.io.converters import (
    convert,
    detect_format,
    parts_to_sae,
    read_parts,
    read_sae,
    sae_to_parts,
    write_parts,
)
from saekit.io.legacy import LegacyFormatError
from saekit.saes import SAE

D, F, K = 12, 40, 5


def _x(n: int = 32, seed: int = 7) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 2


def _randomize(sae: SAE, seed: int = 3) -> SAE:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return sae


def _topk_ref(pre_BF: torch.Tensor, k: int) -> torch.Tensor:
    vals, idx = pre_BF.relu().topk(k, dim=-1)
    return torch.zeros_like(pre_BF).scatter(-1, idx, vals)


def _assert_same_outputs(a: SAE, b: SAE) -> None:
    x = _x()
    torch.testing.assert_close(a.encode(x), b.encode(x))
    torch.testing.assert_close(a.decode(a.encode(x)), b.decode(b.encode(x)))


# --------------------------------------------------------------------------- legacy .pt


def test_legacy_pt_converts_to_saekit_folder(tmp_path):
    src = tmp_path / "final_sparse_autoencoder_smollm2-135m_blocks.2.hook_resid_pre_48.pt"
    sd = write_legacy_pt(src, d_in=D, expansion_factor=4, model_name="smollm2-135m",
                         hook_point="blocks.2.hook_resid_pre", hook_point_layer=2, on_gpu=True)
    log_sparsity = write_legacy_sparsity(tmp_path / (src.stem + "_log_feature_sparsity.pt"), 4 * D)

    dst = convert(src, tmp_path / "out", to="saekit")
    sae = SAE.load(dst)

    x = _x()
    feats_ref, recon_ref = reference_relu_sae(sd, x)
    torch.testing.assert_close(sae.encode(x), feats_ref)
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon_ref)
    assert sae.cfg.architecture == "relu" and sae.cfg.decoder_norm == "unit"
    assert sae.cfg.metadata.model_name == "smollm2-135m"
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_resid_pre"
    assert sae.cfg.metadata.extra["source_format"] == "mats_pt"
    saved = load_file(str(dst / "sparsity.safetensors"))["sparsity"]
    torch.testing.assert_close(saved, log_sparsity)


# --------------------------------------------------------------------------- SAELens


@pytest.mark.parametrize("arch, settings", [("relu", {}), ("topk", {"k": K})])
def test_saekit_saelens_round_trip(tmp_path, arch, settings):
    sae = _randomize(SAE.create(arch, d_in=D, d_sae=F, metadata={"model_name": "m", "hook_name": "blocks.1.hook_resid_pre"}, **settings))
    sae.save(tmp_path / "kit")
    convert(tmp_path / "kit", tmp_path / "lens", to="saelens")

    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard", "topk": "topk"}[arch]
    assert "saekit_architecture" not in cfg and "decoder_norm" not in cfg
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_pre"

    back = read_sae(tmp_path / "lens")
    _assert_same_outputs(sae, back)
    convert(tmp_path / "lens", tmp_path / "kit2", to="saekit")
    _assert_same_outputs(sae, SAE.load(tmp_path / "kit2"))


@pytest.mark.parametrize("arch, settings", [("jumprelu", {}), ("batchtopk", {"k": K})])
def test_threshold_architectures_export_to_saelens_as_jumprelu(tmp_path, arch, settings):
    sae = _randomize(SAE.create(arch, d_in=D, d_sae=F, **settings)).eval()
    with torch.no_grad():
        sae.threshold.copy_(torch.rand(F) * 0.5)
    sae.save(tmp_path / "kit")
    convert(tmp_path / "kit", tmp_path / "lens", to="saelens")
    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    t = load_file(str(tmp_path / "lens" / "sae_weights.safetensors"))
    x = _x()
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]  # SAELens JumpReLU, written out
    f_ref = pre.relu() * (pre > t["threshold"])
    torch.testing.assert_close(sae.encode(x), f_ref)
    torch.testing.assert_close(read_sae(tmp_path / "lens").encode(x), f_ref)


def test_old_flat_saelens_folder_loads(tmp_path):
    # The layout of jbloom/GPT2-Small-SAEs-Reformatted: flat keys, `hook_point`, torch dtype.
    g = torch.Generator().manual_seed(0)
    sd = {"W_enc": torch.randn(D, F, generator=g), "b_enc": torch.randn(F, generator=g),
          "W_dec": torch.randn(F, D, generator=g), "b_dec": torch.randn(D, generator=g)}
    folder = tmp_path / "blocks.8.hook_resid_pre"
    folder.mkdir()
    save_file(sd, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "d_in": D, "d_sae": F, "hook_point": "blocks.8.hook_resid_pre", "hook_point_layer": 8,
        "model_name": "gpt2-small", "dataset_path": "Skylion007/openwebtext",
        "context_size": 128, "dtype": "torch.float32",
    }))
    assert detect_format(folder) == "saelens"
    sae = read_sae(folder)
    x = _x()
    feats_ref, recon_ref = reference_relu_sae(sd, x)
    torch.testing.assert_close(sae.encode(x), feats_ref)
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon_ref)
    assert sae.cfg.metadata.hook_name == "blocks.8.hook_resid_pre"
    assert sae.cfg.metadata.model_name == "gpt2-small"


def test_flat_saelens_topk_activation_fn(tmp_path):
    g = torch.Generator().manual_seed(1)
    sd = {"W_enc": torch.randn(D, F, generator=g), "b_enc": torch.randn(F, generator=g),
          "W_dec": torch.randn(F, D, generator=g), "b_dec": torch.randn(D, generator=g)}
    save_file(sd, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": D, "d_sae": F, "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K}, "apply_b_dec_to_input": False,
        "hook_name": "blocks.0.hook_resid_post", "model_name": "m", "dtype": "float32",
    }))
    sae = read_sae(tmp_path)
    x = _x()
    torch.testing.assert_close(sae.encode(x), _topk_ref(x @ sd["W_enc"] + sd["b_enc"], K))


# --------------------------------------------------------------------------- sparsify


def _sparsify_ref(t: dict[str, torch.Tensor], x: torch.Tensor, k: int):
    """sparsify's SparseCoder: topk of relu(linear(x - b_dec)), decode with W_dec + b_dec."""
    f = _topk_ref(torch.nn.functional.linear(x - t["b_dec"], t["encoder.weight"], t["encoder.bias"]), k)
    return f, f @ t["W_dec"] + t["b_dec"]


def _write_sparsify(folder, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {"encoder.weight": torch.randn(F, D, generator=g), "encoder.bias": torch.randn(F, generator=g),
         "W_dec": torch.randn(F, D, generator=g), "b_dec": torch.randn(D, generator=g)}
    folder.mkdir(parents=True)
    save_file(t, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "activation": "topk", "expansion_factor": 4, "normalize_decoder": True, "num_latents": F,
        "k": K, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D}))
    return t


def test_sparsify_folder_loads_and_round_trips(tmp_path):
    run = tmp_path / "run"
    t = _write_sparsify(run / "layers.3")
    (run / "config.json").write_text(json.dumps({"model": "HuggingFaceTB/SmolLM2-135M", "dataset": "x"}))
    assert detect_format(run / "layers.3") == "sparsify"

    sae = read_sae(run / "layers.3")
    x = _x()
    f_ref, recon_ref = _sparsify_ref(t, x, K)
    torch.testing.assert_close(sae.encode(x), f_ref)
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon_ref)
    assert sae.cfg.metadata.hook_name == "layers.3"
    assert sae.cfg.metadata.model_name == "HuggingFaceTB/SmolLM2-135M"

    convert(run / "layers.3", tmp_path / "kit", to="saekit")
    convert(tmp_path / "kit", tmp_path / "back" / "layers.3", to="sparsify")
    t_back = load_file(str(tmp_path / "back" / "layers.3" / "sae.safetensors"))
    assert set(t_back) == set(t)
    f_back, recon_back = _sparsify_ref(t_back, x, K)
    torch.testing.assert_close(f_back, f_ref)
    torch.testing.assert_close(recon_back, recon_ref)


def test_sparsify_export_folds_b_dec_when_not_subtracted(tmp_path):
    sae = _randomize(SAE.create("topk", d_in=D, d_sae=F, k=K, apply_b_dec_to_input=False))
    write_parts(sae_to_parts(sae), tmp_path / "sp", "sparsify")
    t = load_file(str(tmp_path / "sp" / "sae.safetensors"))
    x = _x()
    f_ref, recon_ref = _sparsify_ref(t, x, K)
    torch.testing.assert_close(sae.encode(x), f_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon_ref, rtol=1e-5, atol=1e-5)


def test_sparsify_refuses_relu_and_unsupported_flags(tmp_path):
    with pytest.raises(ValueError, match="TopK"):
        write_parts(sae_to_parts(SAE.create("relu", d_in=D, d_sae=F)), tmp_path / "a", "sparsify")
    _write_sparsify(tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "cfg.json").read_text())
    (tmp_path / "b" / "cfg.json").write_text(json.dumps({**cfg, "skip_connection": True}))
    with pytest.raises(ValueError, match="skip_connection"):
        read_parts(tmp_path / "b")


# --------------------------------------------------------------------------- dictionary_learning


def _dl_relu_ref(s: dict[str, torch.Tensor], x: torch.Tensor):
    """dictionary_learning AutoEncoder: relu(encoder(x - bias)), decoder(f) + bias."""
    f = torch.relu(torch.nn.functional.linear(x - s["bias"], s["encoder.weight"], s["encoder.bias"]))
    return f, torch.nn.functional.linear(f, s["decoder.weight"]) + s["bias"]


def test_dictionary_learning_autoencoder_round_trip(tmp_path):
    g = torch.Generator().manual_seed(4)
    state = {"bias": torch.randn(D, generator=g), "encoder.weight": torch.randn(F, D, generator=g),
             "encoder.bias": torch.randn(F, generator=g), "decoder.weight": torch.randn(D, F, generator=g)}
    folder = tmp_path / "trainer_0"
    folder.mkdir()
    torch.save(state, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": {
        "trainer_class": "StandardTrainer", "dict_class": "AutoEncoder", "activation_dim": D,
        "dict_size": F, "layer": 3, "lm_name": "EleutherAI/pythia-70m-deduped",
        "submodule_name": "resid_3"}}))
    assert detect_format(folder) == "dictionary_learning"

    sae = read_sae(folder)
    x = _x()
    f_ref, recon_ref = _dl_relu_ref(state, x)
    torch.testing.assert_close(sae.encode(x), f_ref)
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon_ref)
    assert sae.cfg.metadata.model_name == "EleutherAI/pythia-70m-deduped"

    convert(folder, tmp_path / "kit", to="saekit")
    convert(tmp_path / "kit", tmp_path / "dl", to="dictionary_learning")
    from saekit.io.legacy import safe_torch_load

    state_back = safe_torch_load(tmp_path / "dl" / "ae.pt")
    assert set(state_back) == set(state)
    f_back, recon_back = _dl_relu_ref(state_back, x)
    torch.testing.assert_close(f_back, f_ref)
    torch.testing.assert_close(recon_back, recon_ref)


@pytest.mark.parametrize("dict_class", ["AutoEncoderTopK", "BatchTopKSAE"])
def test_dictionary_learning_topk_and_batchtopk(tmp_path, dict_class):
    from saekit.saes import SAE_CLASSES

    if dict_class == "BatchTopKSAE" and "jumprelu" not in SAE_CLASSES:
        pytest.skip("saekit's jumprelu architecture is not registered yet")
    g = torch.Generator().manual_seed(5)
    state = {"encoder.weight": torch.randn(F, D, generator=g), "encoder.bias": torch.randn(F, generator=g),
             "decoder.weight": torch.randn(D, F, generator=g), "b_dec": torch.randn(D, generator=g),
             "k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(0.7)}
    x = _x()
    pre = torch.nn.functional.linear(x - state["b_dec"], state["encoder.weight"], state["encoder.bias"])
    # AutoEncoderTopK.encode: top k of relu(pre); BatchTopKSAE at inference: relu(pre) > threshold
    expected = _topk_ref(pre, K) if dict_class == "AutoEncoderTopK" else pre.relu() * (pre.relu() > 0.7)
    torch.save(state, tmp_path / "ae.pt")
    (tmp_path / "config.json").write_text(json.dumps({"trainer": {"dict_class": dict_class, "k": K}}))
    sae = parts_to_sae(read_parts(tmp_path))
    torch.testing.assert_close(sae.encode(x), expected)
    torch.testing.assert_close(sae.decode(sae.encode(x)), expected @ state["decoder.weight"].T + state["b_dec"])


def test_dictionary_learning_ae_pt_is_loaded_safely(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"encoder.weight": Payload()}, folder / "ae.pt")
    with pytest.raises(LegacyFormatError, match="system"):
        read_sae(folder)
    assert not marker.exists()


def test_unknown_inputs_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an SAE folder"):
        detect_format(tmp_path / "empty")
    with pytest.raises(ValueError, match="cannot convert to 'onnx'"):
        convert(tmp_path / "empty", tmp_path / "x", to="onnx")


def test_transcoders_are_not_written_as_plain_saelens_saes(tmp_path):
    SAE.create("relu", d_in=4, d_sae=8, d_out=6).save(tmp_path / "tc")
    with pytest.raises(ValueError, match="does not write transcoders"):
        convert(tmp_path / "tc", tmp_path / "out", to="saelens")
