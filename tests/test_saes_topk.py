"""topk SAE on hand-set weights (d_in=2, d_sae=3), and AuxK."""

import pytest
import torch

from saekit.saes import SAE

X = torch.tensor([[2.0, 1.0], [0.0, 2.0]])


def hand_sae(k: int = 1, **settings) -> SAE:
    sae = SAE.create("topk", d_in=2, d_sae=3, k=k, **settings)
    sae.load_state_dict({
        "W_enc": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]),
        "b_enc": torch.tensor([0.0, -1.0, -0.5]),
        "W_dec": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]),
        "b_dec": torch.zeros(2),
    })  # fmt: skip
    return sae


def test_forward_by_hand():
    out = hand_sae(k=1)(X)
    # pre = [[2, 0, 2.5], [0, 1, 1.5]]; the largest entry of each row survives
    torch.testing.assert_close(out.feature_acts, torch.tensor([[0.0, 0.0, 2.5], [0.0, 0.0, 1.5]]))
    torch.testing.assert_close(out.sae_out, torch.tensor([[1.5, 2.0], [0.9, 1.2]]))
    # errors 0.25 + 1 = 1.25 and 0.81 + 0.64 = 1.45 -> 1.35; variance 1.25
    torch.testing.assert_close(out.mse_loss, torch.tensor(1.35 / 1.25))
    assert out.sparsity_loss == 0 and out.aux_loss == 0
    out2 = hand_sae(k=2)(X)
    torch.testing.assert_close(out2.feature_acts, torch.tensor([[2.0, 0.0, 2.5], [0.0, 1.0, 1.5]]))


def test_negative_pre_activations_are_zeroed():
    sae = hand_sae(k=2)
    # x = [-1, -1]: pre = [-1, -2, -2.5]; the top-2 are negative, ReLU zeroes them
    assert sae.encode(torch.tensor([[-1.0, -1.0]])).abs().sum() == 0


def test_auxk_only_with_dead_features():
    sae = hand_sae(k=1, aux_k=1)
    assert sae(X, dead_mask=torch.zeros(3, dtype=torch.bool)).aux_loss == 0
    out = sae(X, dead_mask=torch.tensor([True, True, False]))
    # dead features 0, 1: top-1 of relu(pre[:, :2]) -> row 1: f0 = 2; row 2: f1 = 1
    residual = X - out.sae_out.detach()  # [[0.5, -1], [-0.9, 0.8]]
    aux_rec = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    err = (aux_rec - residual).pow(2).sum(1).mean()
    var = (residual - residual.mean(0)).pow(2).sum(1).mean()
    torch.testing.assert_close(out.aux_loss, err / var / 32)
    torch.testing.assert_close(out.loss, out.mse_loss + out.aux_loss)
    # AuxK trains the dead features' encoder columns, not the live one
    (grad,) = torch.autograd.grad(out.aux_loss, sae.W_enc)
    assert grad[:, :2].abs().sum() > 0 and grad[:, 2].abs().sum() == 0


def test_auxk_default_k_aux_is_half_d_in():
    sae = SAE.create("topk", d_in=8, d_sae=16, k=2)
    x = torch.randn(4, 8)
    dead = torch.ones(16, dtype=torch.bool)
    out = sae(x, dead_mask=dead)
    residual = (x - out.sae_out).detach()
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    vals, idx = pre.relu().topk(4, dim=1)  # d_in // 2 = 4
    rec = torch.zeros_like(pre).scatter(1, idx, vals) @ sae.W_dec
    err = (rec - residual).pow(2).sum(1).mean()
    var = (residual - residual.mean(0)).pow(2).sum(1).mean()
    torch.testing.assert_close(out.aux_loss, err / var / 32)


def test_gradients_flow():
    sae = hand_sae(k=1)
    sae(X).loss.backward()
    # only the selected feature 2 gets encoder gradient
    assert sae.W_enc.grad[:, 2].abs().sum() > 0
    assert sae.W_enc.grad[:, :2].abs().sum() == 0
    assert sae.b_dec.grad.abs().sum() > 0


def test_rescale_acts_by_decoder_norm():
    sae = hand_sae(k=1, rescale_acts_by_decoder_norm=True)
    with torch.no_grad():
        sae.W_dec[0] *= 2  # feature 0 pre becomes 2 * 2 = 4 and wins on row 1
    f = sae.encode(X[:1])
    torch.testing.assert_close(f, torch.tensor([[4.0, 0.0, 0.0]]))
    # decode: (4 / 2) * W_dec[0] = 2 * [2, 0]
    torch.testing.assert_close(sae.decode(f), torch.tensor([[4.0, 0.0]]))


def test_k_is_required_and_validated():
    with pytest.raises(ValueError, match="needs 'k'"):
        SAE.create("topk", d_in=2, d_sae=3)
    with pytest.raises(ValueError, match="k=4"):
        SAE.create("topk", d_in=2, d_sae=3, k=4)
    with pytest.raises(ValueError, match="'l1_coefficient' does not apply"):
        SAE.create("topk", d_in=2, d_sae=3, k=1, l1_coefficient=0.1)
