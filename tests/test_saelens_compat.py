"""SAE folders open in SAELens 6 and SAELens folders open in saekit, with the same outputs.

Runs only where `sae_lens` is installed (e.g. `pip install sae-lens`).
"""

import json

import pytest
import torch

from saekit.saes import SAE

sae_lens = pytest.importorskip("sae_lens")

SAEKIT_ARCHS = {
    "relu": {},
    "topk": {"k": 3},
    "batchtopk": {"k": 3},
    "matryoshka": {"k": 3, "prefixes": [4, 8]},
    "jumprelu": {},
    "gated": {},
}


def randomise(module: torch.nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "threshold":
                p.uniform_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.3)


def assert_same_outputs(saekit_sae: SAE, lens_sae, d_in: int) -> None:
    x = torch.randn(7, d_in)
    with torch.no_grad():
        f = saekit_sae.encode(x)
        torch.testing.assert_close(lens_sae.encode(x), f)
        torch.testing.assert_close(lens_sae.decode(f), saekit_sae.decode(f))
    assert (f != 0).any() and (f == 0).any()  # the comparison exercised sparsity


@pytest.mark.parametrize("d_out", [None, 5])
@pytest.mark.parametrize("arch", sorted(SAEKIT_ARCHS))
def test_saekit_folder_loads_in_saelens(tmp_path, arch, d_out):
    if d_out is not None and arch in ("topk", "gated"):
        pytest.skip("SAELens has no TopK or gated transcoder class")
    sae = SAE.create(arch, d_in=6, d_sae=16, d_out=d_out, **SAEKIT_ARCHS[arch])
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_pre"
    randomise(sae)
    if arch in ("batchtopk", "matryoshka"):
        sae.threshold.fill_(0.2)
    sae.eval().save(tmp_path)
    lens_sae = sae_lens.SAE.load_from_disk(tmp_path)
    assert lens_sae.cfg.metadata.hook_name == "blocks.1.hook_resid_pre"
    assert_same_outputs(sae, lens_sae, 6)


def lens_sae_of(arch: str, **extra):
    from sae_lens.registry import get_sae_class

    cls, cfg_cls = get_sae_class(arch)
    cfg = cfg_cls(d_in=6, d_sae=16, **extra)
    cfg.metadata.hook_name = "blocks.2.hook_mlp_out"
    lens = cls(cfg)
    randomise(lens)
    return lens


@pytest.mark.parametrize(
    ("arch", "extra", "saekit_arch"),
    [
        ("standard", {}, "relu"),
        ("topk", {"k": 4}, "topk"),
        ("topk", {"k": 4, "rescale_acts_by_decoder_norm": True}, "topk"),
        ("jumprelu", {}, "jumprelu"),
        ("gated", {}, "gated"),
        ("transcoder", {"d_out": 5, "apply_b_dec_to_input": False}, "relu"),
        ("jumprelu_transcoder", {"d_out": 5, "apply_b_dec_to_input": False}, "jumprelu"),
    ],
)
def test_saelens_folder_loads_in_saekit(tmp_path, arch, extra, saekit_arch):
    lens = lens_sae_of(arch, **extra)
    lens.save_model(tmp_path)
    sae = SAE.load(tmp_path)
    assert sae.cfg.architecture == saekit_arch
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_mlp_out"
    assert_same_outputs(sae, lens, 6)


def test_saelens_batchtopk_training_sae_loads_in_saekit(tmp_path):
    from sae_lens.registry import get_sae_training_class

    cls, cfg_cls = get_sae_training_class("batchtopk")
    lens = cls(cfg_cls(d_in=6, d_sae=16, k=3))
    randomise(lens)
    lens.topk_threshold = torch.tensor(0.2)
    lens.save_inference_model(tmp_path)
    assert json.loads((tmp_path / "cfg.json").read_text())["architecture"] == "jumprelu"
    sae = SAE.load(tmp_path)
    torch.testing.assert_close(sae.threshold, torch.full((16,), 0.2))
    x = torch.randn(7, 6)
    inference = sae_lens.SAE.load_from_disk(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), inference.encode(x))
