"""circuit-tracer transcoder layouts: exact round trips and the files' tensor names/shapes."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from saekit.io.circuit_tracer import (
    export_clt,
    export_transcoder_set,
    import_clt,
    import_transcoder_set,
)
from saekit.saes import SAE
from saekit.saes.clt import CLTConfig, CrossLayerTranscoder
from saekit.training.transcoders import mlp_hooks


def transcoders(arch: str, **settings) -> list[SAE]:
    torch.manual_seed(0)
    saes = []
    for layer in range(3):
        hook_in, hook_out = mlp_hooks(layer)
        sae = SAE.create(arch, d_in=8, d_sae=16, d_out=8, apply_b_dec_to_input=False,
                         metadata={"hook_name": hook_in, "hook_name_out": hook_out}, **settings)  # fmt: skip
        with torch.no_grad():
            for p in sae.parameters():
                p.normal_()
        saes.append(sae)
    return saes


@pytest.mark.parametrize(
    "arch, settings", [("topk", {"k": 4, "skip": True}), ("jumprelu", {}), ("relu", {})]
)
def test_transcoder_set_round_trip(arch, settings, tmp_path):
    saes = transcoders(arch, **settings)
    export_transcoder_set(saes, tmp_path / "ct")
    t = load_file(str(tmp_path / "ct" / "layer_1.safetensors"))
    assert t["W_enc"].shape == (16, 8) and t["W_dec"].shape == (16, 8)
    torch.testing.assert_close(t["W_enc"], saes[1].W_enc.T)
    config = yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())
    assert (
        config["feature_input_hook"] == "mlp.hook_in"
        and config["feature_output_hook"] == "hook_mlp_out"
    )
    assert config["model_kind"] == "transcoder_set"  # circuit-tracer's loaders dispatch on it
    back = import_transcoder_set(tmp_path / "ct")
    x = torch.randn(5, 8)
    for a, b in zip(saes, back, strict=True):
        assert b.cfg.metadata.hook_name == a.cfg.metadata.hook_name
        assert b.cfg.metadata.hook_name_out == a.cfg.metadata.hook_name_out
        assert b.cfg.architecture == a.cfg.architecture
        torch.testing.assert_close(b(x, torch.zeros(5, 8)).sae_out, a(x, torch.zeros(5, 8)).sae_out)


def test_skip_is_stored_as_circuit_tracers_transpose(tmp_path):
    saes = transcoders("topk", k=4, skip=True)
    export_transcoder_set(saes, tmp_path / "ct")
    W_skip = load_file(str(tmp_path / "ct" / "layer_0.safetensors"))["W_skip"]
    x = torch.randn(3, 8)
    torch.testing.assert_close(x @ W_skip.T, x @ saes[0].W_skip)  # what circuit-tracer computes


def test_clt_round_trip_and_layout(tmp_path):
    torch.manual_seed(0)
    clt = CrossLayerTranscoder(CLTConfig(n_layers=3, d_in=8, d_sae=16, k=4, activation="batchtopk"))
    with torch.no_grad():
        clt.threshold.uniform_(0, 0.5)
        clt.b_enc.normal_()
    export_clt(clt.eval(), tmp_path / "ct")
    enc = load_file(str(tmp_path / "ct" / "W_enc_2.safetensors"))
    assert enc["W_enc_2"].shape == (16, 8) and enc["threshold_2"].shape == (16,)
    assert load_file(str(tmp_path / "ct" / "W_dec_0.safetensors"))["W_dec_0"].shape == (16, 3, 8)
    assert yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())["model_kind"] == (
        "cross_layer_transcoder"
    )
    back = import_clt(tmp_path / "ct")  # as trained: config.yaml records activation and k
    assert (back.cfg.activation, back.cfg.k) == ("batchtopk", clt.cfg.k)
    x = torch.randn(6, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(back.decode(back.encode(x)), clt.decode(clt.encode(x)))
    for key, value in clt.state_dict_flat().items():
        assert torch.equal(back.state_dict_flat()[key], value), key


def test_jumprelu_clt_round_trip_keeps_thresholds_bit_exact(tmp_path):
    torch.manual_seed(2)
    clt = CrossLayerTranscoder(CLTConfig(n_layers=3, d_in=8, d_sae=16, activation="jumprelu"))
    with torch.no_grad():
        clt.threshold.uniform_(0, 0.5)
        clt.b_enc.normal_()
    export_clt(clt.eval(), tmp_path / "ct")
    for i in range(3):
        enc = load_file(str(tmp_path / "ct" / f"W_enc_{i}.safetensors"))
        assert torch.equal(enc[f"threshold_{i}"], clt.threshold[i].detach())
    config_file = tmp_path / "ct" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    assert config.pop("saekit") == {"activation": "jumprelu", "k": None}
    config_file.write_text(yaml.safe_dump(config))  # as circuit-tracer's own files: no saekit key
    back = import_clt(tmp_path / "ct")
    assert back.cfg.activation == "jumprelu" and back.cfg.k is None
    as_batchtopk = import_clt(tmp_path / "ct", k=5)  # a k asks for batchtopk
    assert (as_batchtopk.cfg.activation, as_batchtopk.cfg.k) == ("batchtopk", 5)
    assert torch.equal(as_batchtopk.threshold, back.threshold)
    for key, value in clt.state_dict_flat().items():
        assert torch.equal(back.state_dict_flat()[key], value), key
    x = torch.randn(6, 3, 8)
    with torch.no_grad():
        assert (clt.encode(x) > 0).any()
        assert torch.equal(back.encode(x), clt.encode(x))
    with pytest.raises(ValueError, match="activation='topk' is not one of batchtopk, jumprelu"):
        import_clt(tmp_path / "ct", activation="topk")


def test_topk_clt_export_is_refused(tmp_path):
    clt = CrossLayerTranscoder(CLTConfig(n_layers=2, d_in=8, d_sae=16, k=4))
    with pytest.raises(ValueError, match="--arch batchtopk"):
        export_clt(clt, tmp_path / "ct")


def test_saekit_convert_round_trips_a_clt_and_a_transcoder_run(tmp_path):
    """`saekit convert --to circuit-tracer` and back `--to saekit`: same tensors and hooks."""
    from saekit.cli import main
    from saekit.saes.clt import load_clt

    torch.manual_seed(1)
    hooks = [mlp_hooks(i) for i in range(3)]
    meta = {"model_name": "m", "hook_name": hooks[0][0], "hook_name_out": hooks[0][1],
            "hook_names": [h[0] for h in hooks], "hook_names_out": [h[1] for h in hooks]}  # fmt: skip
    clt = CrossLayerTranscoder(CLTConfig(n_layers=3, d_in=8, d_sae=16, k=4, activation="batchtopk",
                                         metadata=meta))  # fmt: skip
    with torch.no_grad():
        clt.threshold.uniform_(0, 0.5)
    clt.save(tmp_path / "clt")
    assert (
        main(["convert", str(tmp_path / "clt"), str(tmp_path / "ct"), "--to", "circuit-tracer"])
        == 0
    )
    assert main(["convert", str(tmp_path / "ct"), str(tmp_path / "back")]) == 0
    back = load_clt(tmp_path / "back")
    for key, value in clt.state_dict_flat().items():
        assert torch.equal(back.state_dict_flat()[key], value), key
    assert back.cfg.metadata.extra["hook_names_out"] == meta["hook_names_out"]
    assert back.cfg.metadata.model_name == "m"

    for sae in transcoders("topk", k=4):
        sae.save(tmp_path / "run" / sae.cfg.metadata.hook_name)
    assert (
        main(["convert", str(tmp_path / "run"), str(tmp_path / "ct2"), "--to", "circuit-tracer"])
        == 0
    )
    assert main(["convert", str(tmp_path / "ct2"), str(tmp_path / "run2")]) == 0
    for sae in transcoders("topk", k=4):
        again = SAE.load(tmp_path / "run2" / sae.cfg.metadata.hook_name)
        assert again.cfg.metadata.hook_name_out == sae.cfg.metadata.hook_name_out
        for name, value in sae.state_dict().items():
            assert torch.equal(again.state_dict()[name], value), name
    assert main(["convert", str(tmp_path / "ct2"), str(tmp_path / "run2")]) == 2  # exists: refused
