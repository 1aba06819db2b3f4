"""Behaviour every architecture shares: init, shapes, gradients, folding, decoder constraints."""

import pytest
import torch

from saekit.evals.metrics import fvu
from saekit.saes import SAE, SAE_CLASSES, SAEConfig

SETTINGS = {
    "relu": {},
    "topk": {"k": 3},
    "batchtopk": {"k": 3},
    "matryoshka": {"k": 3, "prefixes": [4, 8]},
    "jumprelu": {"init_threshold": 0.05},
    "gated": {},
}


def make(arch: str, d_out: int | None = None, **kw) -> SAE:
    """In training mode, with random biases."""
    torch.manual_seed(0)
    sae = SAE.create(arch, d_in=6, d_sae=16, d_out=d_out, **{**SETTINGS[arch], **kw}).train()
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if p.dim() == 1 and name != "threshold":
                p.uniform_(-0.1, 0.3)
    return sae


def test_every_registered_architecture_is_tested():
    assert set(SAE_CLASSES) == set(SETTINGS)


@pytest.mark.parametrize("arch", sorted(SETTINGS))
def test_init(arch):
    sae = SAE.create(arch, d_in=6, d_sae=16, **SETTINGS[arch])
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(16))
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert sae.b_dec.abs().sum() == 0
    assert not sae.training  # ready for inference, as SAE.load returns it
    assert sae.cfg.architecture == arch and isinstance(sae.cfg, SAEConfig)


@pytest.mark.parametrize("arch", sorted(SETTINGS))
def test_shapes_and_leading_dims(arch):
    sae = make(arch, d_out=4).eval()
    x, target = torch.randn(2, 5, 6), torch.randn(2, 5, 4)
    out = sae(x, target)
    assert out.sae_out.shape == (2, 5, 4) and out.feature_acts.shape == (2, 5, 16)
    assert all(t.shape == () for t in out[2:])
    flat = sae(x.reshape(10, 6), target.reshape(10, 4))
    torch.testing.assert_close(out.sae_out.reshape(10, 4), flat.sae_out)
    torch.testing.assert_close(out.mse_loss, flat.mse_loss)
    if arch != "matryoshka":  # (matryoshka sums the FVU over prefixes)
        torch.testing.assert_close(out.mse_loss, fvu(target.reshape(10, 4), flat.sae_out))
    with pytest.raises(ValueError, match="expected inputs"):
        sae(torch.randn(3, 4))


@pytest.mark.parametrize("arch", sorted(SETTINGS))
def test_gradients_reach_every_parameter(arch):
    sae = make(arch)
    x = torch.randn(32, 6)
    out = sae(x, dead_mask=torch.ones(16, dtype=torch.bool), sparsity_coefficient=0.1)
    out.loss.backward()
    for name, p in sae.named_parameters():
        if arch in ("jumprelu",) and name == "threshold":
            continue  # only pre-activations within bandwidth/2 of the threshold give gradient
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    torch.testing.assert_close(out.loss, out.mse_loss + out.sparsity_loss + out.aux_loss)


@pytest.mark.parametrize("arch", sorted(SETTINGS))
@pytest.mark.parametrize("transcoder", [False, True])
def test_fold_activation_scale(arch, transcoder):
    sae = make(arch, d_out=4 if transcoder else None).eval()
    scale, scale_out = 3.0, (0.5 if transcoder else None)
    x = torch.randn(8, 6)
    with torch.no_grad():
        if arch in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.1)
        before_f = sae.encode(x * scale)
        before_out = sae.decode(before_f)
    sae.fold_activation_scale(scale, scale_out)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), before_f)
        torch.testing.assert_close(sae.decode(sae.encode(x)), before_out / (scale_out or scale))


def test_fold_rejects_two_scales_with_b_dec_on_input():
    with pytest.raises(ValueError, match="scale_out"):
        make("relu").fold_activation_scale(2.0, 3.0)


def _reference_forward(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature acts, reconstruction) of the inference forward, by hand in float64."""
    p = {name: t.double() for name, t in sae.state_dict().items()}
    x = x.double() - p["b_dec"]
    if sae.cfg.architecture == "gated":
        gate = x @ p["W_enc"] + p["b_gate"]
        f = (gate > 0) * (x @ (p["W_enc"] * p["r_mag"].exp()) + p["b_mag"]).relu()
    else:
        pre = x @ p["W_enc"] + p["b_enc"]
        if sae.cfg.architecture == "topk":
            top = pre.topk(sae.cfg.k).indices
            f = pre.relu() * torch.zeros_like(pre, dtype=torch.bool).scatter(-1, top, True)
        elif "threshold" in p:  # jumprelu; batchtopk and matryoshka at inference
            f = pre.relu() * (pre > p["threshold"])
        else:
            f = pre.relu()
    return f, f @ p["W_dec"] + p["b_dec"]


@pytest.mark.parametrize("arch", sorted(SETTINGS))
def test_fresh_sae_forward_is_exact_in_every_mode(arch, monkeypatch):
    """`SAE.create(...)` then `sae(x)` is the inference forward, equal to a float64 computation
    by hand, and so is `sae.eval()(x)`; so are `sae.train()(x)`, `encode` and `decode` for every
    architecture whose training activations are not chosen over the batch. A CPU that
    multiplies bfloat16 natively (forced here, so the check means the same on every machine)
    must not make any of them approximate."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    torch.manual_seed(0)
    sae = SAE.create(arch, d_in=64, d_sae=512, **SETTINGS[arch])  # k=3: the sparse path on CPU
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if p.dim() == 1 and name != "threshold":
                p.normal_(0, 0.3)
    x = torch.randn(256, 64) * 3
    ref_f, ref_out = _reference_forward(sae, x)
    with torch.no_grad():
        fresh = sae(x)
        torch.testing.assert_close(fresh.feature_acts.double(), ref_f, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fresh.sae_out.double(), ref_out, rtol=1e-4, atol=1e-4)
        modes = [sae.eval()] + ([] if sae.batch_dependent else [sae.train()])
        for mode in modes:
            out = mode(x)
            assert torch.equal(out.sae_out, fresh.sae_out), mode.training
            assert torch.equal(out.feature_acts, fresh.feature_acts), mode.training
            # the dense encode/decode against the forward's (maybe sparse) kernels: to rounding
            torch.testing.assert_close(mode.encode(x), fresh.feature_acts)
            torch.testing.assert_close(mode.decode(fresh.feature_acts), fresh.sae_out)


@pytest.mark.parametrize("arch", sorted(SETTINGS))
def test_decoder_constraints(arch):
    sae = make(arch)
    sae(torch.randn(16, 6), sparsity_coefficient=0.1).loss.backward()
    grad = sae.W_dec.grad.clone()
    sae.before_optimizer_step()
    if sae.unit_norm_decoder:
        # the projected gradient is orthogonal to each row; the removed part is parallel
        torch.testing.assert_close((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(16))
        removed = grad - sae.W_dec.grad
        cos = torch.nn.functional.cosine_similarity(removed, sae.W_dec, dim=1)
        assert torch.all((cos.abs() - 1).abs() < 1e-4) or removed.abs().max() < 1e-6
    else:
        assert torch.equal(sae.W_dec.grad, grad)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.after_optimizer_step()
    expected = torch.ones(16) if sae.unit_norm_decoder else torch.full((16,), 3.0)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), expected)


@pytest.mark.parametrize("arch", sorted(SETTINGS))
def test_transcoder_needs_apply_b_dec_off(arch):
    sae = make(arch, d_out=4)
    assert sae.cfg.is_transcoder and not sae.cfg.apply_b_dec_to_input
    assert sae.W_dec.shape == (16, 4) and sae.W_enc.shape == (6, 16)
    with pytest.raises(ValueError, match="apply_b_dec_to_input=True is impossible"):
        SAE.create(arch, d_in=6, d_sae=16, d_out=4, apply_b_dec_to_input=True, **SETTINGS[arch])
    same_width = SAE.create(
        arch, d_in=6, d_sae=16, metadata={"hook_name_out": "blocks.0.hook_mlp_out"},
        **SETTINGS[arch],
    )  # fmt: skip
    assert same_width.cfg.is_transcoder and not same_width.cfg.apply_b_dec_to_input
    # a same-width transcoder may still centre its input on b_dec if asked to (SAELens can)
    SAE.create(
        arch, d_in=6, d_sae=16, apply_b_dec_to_input=True,
        metadata={"hook_name_out": "blocks.0.hook_mlp_out"}, **SETTINGS[arch],
    )  # fmt: skip


def test_create_errors():
    with pytest.raises(ValueError, match="unknown SAE architecture 'nope'"):
        SAE.create("nope", d_in=2, d_sae=3)
    with pytest.raises(ValueError, match="prefixes"):
        SAE.create("matryoshka", d_in=2, d_sae=3, k=1, prefixes=[2, 1])
    with pytest.raises(ValueError, match="prefixes"):
        SAE.create("matryoshka", d_in=2, d_sae=3, k=1, prefixes=[4])
    with pytest.raises(ValueError, match="sparsity_mode"):
        SAE.create("jumprelu", d_in=2, d_sae=3, sparsity_mode="l0")


def test_fvu_is_fraction_of_variance_unexplained():
    target = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    # predicting the mean explains nothing
    torch.testing.assert_close(fvu(target, target.mean(0).expand(2, 2)), torch.tensor(1.0))
    # SSE 1 + 4 over the squared deviations from the mean [2, 2]: 1 + 4 + 1 + 4
    torch.testing.assert_close(fvu(target, target + torch.tensor([[1.0, 0.0], [0.0, 2.0]])),
                               torch.tensor(5.0 / 10.0))
    torch.testing.assert_close(fvu(target, target), torch.tensor(0.0))
