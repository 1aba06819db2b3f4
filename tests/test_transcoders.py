"""Transcoders of many layers from one model pass, and skip transcoders."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import small_train_config
from saekit.saes import SAE
from saekit.training.run import train
from saekit.training.transcoders import mlp_hooks, transcoder_layers


@pytest.mark.parametrize(
    "spec, layers", [("all", [0, 1, 2, 3]), ("1:3", [1, 2]), ("2", [2]), (":2", [0, 1]), ("2:", [2, 3])]
)
def test_layer_specs(spec, layers):
    assert transcoder_layers(spec, 4) == layers


@pytest.mark.parametrize("spec", ["3:1", "0:9", "x", "1-3", "4"])
def test_bad_layer_specs_name_the_setting(spec):
    with pytest.raises(ValueError, match="transcoders="):
        transcoder_layers(spec, 4)


@pytest.mark.parametrize("arch, settings", [("topk", {"k": 3}), ("relu", {}), ("jumprelu", {})])
@pytest.mark.parametrize("sparse", [False, True])
def test_skip_transcoder_adds_the_linear_path(arch, settings, sparse, tmp_path):
    torch.manual_seed(0)
    sae = SAE.create(arch, d_in=8, d_sae=32, d_out=6, skip=True, **settings)
    sae.sparse = sparse if arch != "jumprelu" else None
    with torch.no_grad():
        sae.W_skip.normal_()
        sae.b_dec.normal_()
    x_BD, y_BO = torch.randn(5, 8), torch.randn(5, 6)
    out = sae(x_BD, y_BO)
    f_BF = sae.encode(x_BD)
    expected_BO = f_BF @ sae.W_dec + sae.b_dec + x_BD @ sae.W_skip
    torch.testing.assert_close(out.sae_out, expected_BO)
    mse = ((expected_BO - y_BO) ** 2).sum() / ((y_BO - y_BO.mean(0)) ** 2).sum()
    torch.testing.assert_close(out.mse_loss, mse)
    from saekit.evals.spliced import reconstruct

    torch.testing.assert_close(reconstruct(sae, x_BD)[0], expected_BO)  # what evaluation splices
    out.loss.backward()
    assert sae.W_skip.grad is not None and sae.W_skip.grad.abs().sum() > 0

    sae.save(tmp_path / "tc")
    again = SAE.load(tmp_path / "tc")
    assert again.cfg.skip and torch.equal(again.W_skip, sae.W_skip)
    torch.testing.assert_close(again(x_BD, y_BO).sae_out, out.sae_out)


def test_skip_folds_the_activation_scales():
    torch.manual_seed(1)
    sae = SAE.create("topk", d_in=8, d_sae=32, d_out=6, skip=True, k=4)
    with torch.no_grad():
        sae.W_skip.normal_()
    x_BD = torch.randn(5, 8)
    y_scaled_BO = sae(x_BD * 2.0, torch.zeros(5, 6)).sae_out
    sae.fold_activation_scale(2.0, 4.0)
    torch.testing.assert_close(sae(x_BD, torch.zeros(5, 6)).sae_out, y_scaled_BO / 4.0)


def test_skip_is_refused_where_unsupported():
    with pytest.raises(ValueError, match="skip=True is not supported by 'gated'"):
        SAE.create("gated", d_in=8, d_sae=16, d_out=6, skip=True)


def test_all_layer_transcoders_equal_separate_runs(tiny_model_dir, tmp_path):
    """Layers 1:3 in one run: each layer's transcoder is bit-identical to its own run."""
    common = dict(tokens=2048, ks=(8,), eval_tokens=0, hooks=())
    joint = train(small_train_config(tiny_model_dir, tmp_path / "joint", transcoders="1:3", **common))
    assert sorted(joint.sae_folders) == [mlp_hooks(1)[0], mlp_hooks(2)[0]]
    for layer in (1, 2):
        hook_in, hook_out = mlp_hooks(layer)
        sae = SAE.load(joint.sae_folders[hook_in])
        assert (sae.cfg.metadata.hook_name, sae.cfg.metadata.hook_name_out) == (hook_in, hook_out)
        assert sae.cfg.apply_b_dec_to_input is False and not sae.cfg.skip
    hook_in, hook_out = mlp_hooks(1)  # the first unit: its random init is the same too
    single = train(small_train_config(
        tiny_model_dir, tmp_path / "single", **{**common, "hooks": (hook_in,)}, hook_out=hook_out,
    ))  # fmt: skip
    a = load_file(str(joint.sae_folders[hook_in] / "sae_weights.safetensors"))
    b = load_file(str(single.sae_folders[hook_in] / "sae_weights.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_skip_transcoders_train_and_save_W_skip(tiny_model_dir, tmp_path):
    cfg = small_train_config(
        tiny_model_dir, tmp_path / "run", hooks=(), transcoders="2:", skip=True, tokens=2048,
        ks=(8,), eval_tokens=512,
    )  # fmt: skip
    result = train(cfg)
    replacement = result.final_metrics["replacement"]  # layers 2 and 3 spliced together
    assert len(replacement["fvu_per_layer"]) == 2 and replacement["l0_per_layer"] == [8.0, 8.0]
    assert replacement["ce_loss_replaced"] > 0 and replacement["kl_div"] >= 0
    folder = result.sae_folders[mlp_hooks(3)[0]]
    assert load_file(str(folder / "sae_weights.safetensors"))["W_skip"].abs().sum() > 0
    assert SAE.load(folder).cfg.skip
    assert torch.isfinite(torch.tensor(result.final_metrics[mlp_hooks(3)[0]]["explained_variance"]))
