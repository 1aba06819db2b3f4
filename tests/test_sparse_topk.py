"""The sparse TopK-family path gives the dense path's outputs and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from saekit.saes import SAE
from saekit.saes.pairs import code_from_flat, code_from_topk, sparse_decode
from saekit.saes.sparse import selection_agreement, use_sparse

SETTINGS = {
    "topk": {"k": 4},
    "batchtopk": {"k": 4},
    "matryoshka": {"k": 4, "prefixes": [8, 24]},
}


def _pair(arch: str, dtype: str = "float64"):
    torch.manual_seed(0)
    sae = SAE.create(arch, d_in=12, d_sae=48, dtype=dtype, **SETTINGS[arch])
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    sae.train()
    dense, sparse = copy.deepcopy(sae), copy.deepcopy(sae)
    dense.sparse, sparse.sparse = False, True
    return dense, sparse


def _run(sae, x, dead):
    out = sae(x, dead_mask=dead)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    return out, grads


@pytest.mark.parametrize("arch", sorted(SETTINGS))
@pytest.mark.parametrize("with_dead", [False, True])
def test_sparse_matches_dense(arch, with_dead, monkeypatch):
    import saekit.saes.sparse as sparse_module

    calls = []
    real = sparse_module.sparse_forward
    monkeypatch.setattr(sparse_module, "sparse_forward", lambda *a: calls.append(1) or real(*a))
    dense, sparse = _pair(arch)
    x = torch.randn(20, 12, dtype=torch.float64) * 2 + 0.5
    dead = torch.zeros(48, dtype=torch.bool)
    dead[::3] = True
    dead = dead if with_dead else None
    out_d, g_d = _run(dense, x, dead)
    assert not calls
    out_s, g_s = _run(sparse, x, dead)
    assert calls
    for field in ("sae_out", "feature_acts", "loss", "mse_loss", "sparsity_loss", "aux_loss"):
        torch.testing.assert_close(getattr(out_s, field), getattr(out_d, field), msg=field)
    assert (out_s.feature_acts != 0).sum(-1).float().mean() > 0
    # the firing counts the trainer reads come from the active pairs, not the dense matrix
    torch.testing.assert_close(out_s.fired_F, (out_d.feature_acts != 0).sum(0))
    assert 0 < out_s.fired_F.sum() < 20 * 48
    if with_dead:
        assert out_d.aux_loss > 0
    assert g_s.keys() == g_d.keys()
    for name in g_d:
        torch.testing.assert_close(g_s[name], g_d[name], msg=name)
    for name, buf in dense.named_buffers():  # batchtopk threshold moves the same way
        torch.testing.assert_close(dict(sparse.named_buffers())[name], buf)


def test_sparse_float32_and_eval():
    dense, sparse = _pair("topk", "float32")  # exact selection: the dense path's pairs
    x = torch.randn(64, 12)
    _, g_d = _run(dense, x, None)
    _, g_s = _run(sparse, x, None)
    for name in g_d:
        torch.testing.assert_close(g_s[name], g_d[name], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(sparse.eval()(x).sae_out, dense.eval()(x).sae_out)


def test_decode_by_hand():
    """Two tokens, hand-picked features: out[b] = sum_k v * W_dec[f]."""
    W_FO = torch.arange(12.0).reshape(4, 3)
    code = code_from_topk(torch.tensor([[2, 0], [3, 1]]))
    vals = torch.tensor([1.0, 2.0, 3.0, 0.5])  # row-major, features sorted: (0,2), (1,3)
    expected = torch.stack([1.0 * W_FO[0] + 2.0 * W_FO[2], 3.0 * W_FO[1] + 0.5 * W_FO[3]])
    torch.testing.assert_close(sparse_decode(code, vals, W_FO), expected)


def test_code_from_flat_rows_and_empty_tokens():
    code = code_from_flat(torch.tensor([7, 1, 4]), B=3, F_=4)  # [0,1], [1,0], [1,3]
    assert code.crow.tolist() == [0, 1, 3, 3]
    assert code.rows.tolist() == [0, 1, 1]
    assert code.cols.tolist() == [1, 0, 3]


def test_auto_rule():
    sae = SAE.create("topk", d_in=8, d_sae=64, k=4)
    assert use_sparse(sae, "cpu")
    assert not use_sparse(sae, "meta")  # only the CPU by default
    assert not use_sparse(SAE.create("topk", d_in=8, d_sae=16, k=8), "cpu")
    sae.sparse = False
    assert not use_sparse(sae, "cpu")
    assert use_sparse(SAE.create("relu", d_in=8, d_sae=16), "cpu")  # relu: decided per batch
    batchtopk = SAE.create("batchtopk", d_in=8, d_sae=64, k=4)
    assert not use_sparse(batchtopk, "cpu")  # at inference a JumpReLU
    assert use_sparse(batchtopk.train(), "cpu")
    rescaled = SAE.create("topk", d_in=8, d_sae=64, k=4, rescale_acts_by_decoder_norm=True)
    rescaled.sparse = True
    assert not use_sparse(rescaled, "cpu")  # not supported, even when forced


def test_bf16_selection_keeps_exact_values():
    """Asked for (`approx_selection=True`, as the trainer does), the pairs are chosen from a
    bfloat16 encoder product: the chosen values are the exact float32 pre-activations, and
    the choice is the exact top-k but for rare near-ties; `selection_agreement` measures it."""
    torch.manual_seed(0)
    sae = SAE.create("topk", d_in=64, d_sae=512, k=16).train()
    sae.sparse = True
    x = torch.randn(256, 64) * 3
    out = sae(x, approx_selection=True)
    exact_pre = (x.double() - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double()
    chosen = out.feature_acts != 0
    assert (chosen.sum(-1) <= 16).all()
    torch.testing.assert_close(
        out.feature_acts[chosen].double(), exact_pre[chosen].relu(), rtol=1e-5, atol=1e-5
    )
    exact_top = torch.zeros_like(chosen).scatter(-1, exact_pre.topk(16, dim=-1).indices, True)
    bf16_pre = (x - sae.b_dec).bfloat16() @ sae.W_enc.bfloat16() + sae.b_enc.bfloat16()
    bf16_top = torch.zeros_like(chosen).scatter(-1, bf16_pre.topk(16, dim=-1).indices, True)
    agree = (bf16_top & exact_top).sum().item() / exact_top.sum().item()
    assert 0.97 < agree < 1, agree  # near-ties exist in bfloat16, and they are rare
    assert selection_agreement(sae, x) == pytest.approx(agree)
    assert not torch.equal(out.sae_out, sae(x).sae_out)  # the default stays exact
    torch.testing.assert_close(out.sae_out, out.feature_acts @ sae.W_dec + sae.b_dec)
    torch.testing.assert_close(out.fired_F, chosen.sum(0))
    out.loss.backward()  # gradients flow through the exact values
    assert sae.W_enc.grad.abs().sum() > 0 and sae.W_dec.grad.abs().sum() > 0


def test_sparse_transcoder_and_input_gradient():
    """No b_dec on the input (a transcoder), and a gradient wanted for the input itself."""
    torch.manual_seed(1)
    sae = SAE.create("topk", d_in=12, d_sae=48, d_out=10, k=4, dtype="float64").train()
    assert not sae.cfg.apply_b_dec_to_input
    dense, sparse = copy.deepcopy(sae), copy.deepcopy(sae)
    dense.sparse, sparse.sparse = False, True
    grads = []
    for model in (dense, sparse):
        x = (torch.randn(20, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
        x.requires_grad_(True)
        target = torch.randn(20, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        model(x, target).loss.backward()
        grads.append({"x": x.grad, **{n: p.grad for n, p in model.named_parameters()}})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


@pytest.mark.parametrize("decoder_norm", ["unit", "weighted"])
def test_sparse_relu_matches_dense(decoder_norm):
    """A ReLU SAE with sparse activations: the sparse kernels give the dense forward's
    outputs, L1 penalty and gradients exactly; a dense batch falls back to the dense path."""
    from saekit.saes.sparse import SparseSAEOutput

    torch.manual_seed(4)
    sae = SAE.create("relu", d_in=12, d_sae=96, dtype="float64", decoder_norm=decoder_norm)
    with torch.no_grad():
        sae.b_enc.fill_(-1.2)  # about 5% of the activations positive
        sae.W_dec.mul_(torch.rand(96, 1, dtype=torch.float64) + 0.5)  # norms matter (weighted)
    sae.train()
    dense, sparse = copy.deepcopy(sae), copy.deepcopy(sae)
    dense.sparse, sparse.sparse = False, True
    x = torch.randn(40, 12, dtype=torch.float64)
    out_d, g_d = _run(dense, x, None)
    out_s, g_s = _run(sparse, x, None)
    assert isinstance(out_s, SparseSAEOutput)
    density = (out_d.feature_acts > 0).float().mean()
    assert 0 < density < 1 / 8
    for field in ("sae_out", "feature_acts", "loss", "mse_loss", "sparsity_loss", "aux_loss"):
        torch.testing.assert_close(getattr(out_s, field), getattr(out_d, field), msg=field)
    assert out_s.sparsity_loss > 0
    for name in g_d:
        torch.testing.assert_close(g_s[name], g_d[name], msg=name)
    torch.testing.assert_close(out_s.fired_F, (out_d.feature_acts > 0).sum(0))
    with torch.no_grad():
        sparse.b_enc.fill_(0.5)  # most activations positive: the dense path runs
    assert not isinstance(sparse(x), SparseSAEOutput)
