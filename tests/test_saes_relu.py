"""relu SAE on hand-set weights (d_in=2, d_sae=3); expected numbers worked out by hand."""

import pytest
import torch

from saekit.saes import SAE

X = torch.tensor([[2.0, 1.0], [0.0, 2.0]])


def hand_sae(**settings) -> SAE:
    sae = SAE.create("relu", d_in=2, d_sae=3, **settings)
    sae.load_state_dict({
        "W_enc": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]),
        "b_enc": torch.tensor([0.0, -1.0, -0.5]),
        "W_dec": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]),
        "b_dec": torch.zeros(2),
    })  # fmt: skip
    return sae


def test_forward_by_hand():
    sae = hand_sae(l1_coefficient=0.1)
    out = sae(X)
    # pre = [[2, 0, 2.5], [0, 1, 1.5]] -> relu keeps it
    torch.testing.assert_close(out.feature_acts, torch.tensor([[2.0, 0.0, 2.5], [0.0, 1.0, 1.5]]))
    # 2*[1,0] + 2.5*[.6,.8] = [3.5, 2];  1*[0,1] + 1.5*[.6,.8] = [.9, 2.2]
    torch.testing.assert_close(out.sae_out, torch.tensor([[3.5, 2.0], [0.9, 2.2]]))
    # squared errors 3.25 and 0.85 -> mean 2.05; target variance (1.25 + 1.25)/2 = 1.25
    torch.testing.assert_close(out.mse_loss, torch.tensor(2.05 / 1.25))
    # L1: (4.5 + 2.5) / 2 = 3.5, times 0.1
    torch.testing.assert_close(out.sparsity_loss, torch.tensor(0.35))
    assert out.aux_loss == 0
    torch.testing.assert_close(out.loss, out.mse_loss + out.sparsity_loss)
    torch.testing.assert_close(sae.encode(X), out.feature_acts)
    torch.testing.assert_close(sae.decode(out.feature_acts), out.sae_out)


def test_b_dec_is_subtracted_from_input():
    sae = hand_sae()
    with torch.no_grad():
        sae.b_dec.copy_(torch.tensor([1.0, 1.0]))
    # x - b_dec = [1, 0] -> pre = [1, -1, 0.5]
    torch.testing.assert_close(
        sae.encode(torch.tensor([[2.0, 1.0]])), torch.tensor([[1.0, 0.0, 0.5]])
    )


def test_weighted_l1_uses_decoder_row_norms():
    sae = hand_sae(decoder_norm="weighted", l1_coefficient=1.0)
    with torch.no_grad():
        sae.W_dec[2] *= 2  # row norm 2
    out = sae(X)
    # f unchanged; penalty ((2 + 2*2.5) + (1 + 2*1.5)) / 2 = 5.5
    torch.testing.assert_close(out.sparsity_loss, torch.tensor(5.5))
    assert not sae.unit_norm_decoder
    sae.after_optimizer_step()  # weighted form leaves the decoder alone
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.tensor([1.0, 1.0, 2.0]))
    # the unit form ignores row norms in the penalty
    unit = hand_sae(l1_coefficient=1.0)
    torch.testing.assert_close(unit(X).sparsity_loss, torch.tensor(3.5))


def test_sparsity_coefficient_override():
    sae = hand_sae(l1_coefficient=0.1)
    torch.testing.assert_close(sae(X, sparsity_coefficient=0.5).sparsity_loss, torch.tensor(1.75))


def test_ghost_grads_only_with_dead_features():
    sae = hand_sae()
    assert sae(X, dead_mask=torch.zeros(3, dtype=torch.bool)).aux_loss == 0
    dead = torch.tensor([False, True, False])
    out = sae(X, dead_mask=dead)
    # the ghost loss is rescaled to the value of the MSE ...
    torch.testing.assert_close(out.aux_loss, out.mse_loss)
    # ... and its gradient reaches the dead feature's encoder column
    (grad,) = torch.autograd.grad(out.aux_loss, sae.W_enc)
    assert grad[:, 1].abs().sum() > 0
    assert grad[:, [0, 2]].abs().sum() == 0


def test_ghost_grads_gradient_by_hand():
    sae = hand_sae()
    out = sae(X, dead_mask=torch.tensor([False, True, False]))
    residual = (X - out.sae_out).detach()
    # independent ghost loss: feature 1 activated by exp(pre), output scaled (detached)
    # to half the residual norm, FVU against the residual
    pre1 = (X - sae.b_dec) @ sae.W_enc[:, 1] + sae.b_enc[1]
    ghost = pre1.exp()[:, None] * sae.W_dec[1]
    scale = (residual.norm(dim=1) / (2 * ghost.norm(dim=1))).detach()[:, None]
    err = (ghost * scale - residual).pow(2).sum(1).mean()
    ghost_fvu = err / (residual - residual.mean(0)).pow(2).sum(1).mean()
    expected = torch.autograd.grad(ghost_fvu * (out.mse_loss / ghost_fvu).detach(), sae.W_enc)[0]
    got = torch.autograd.grad(out.aux_loss, sae.W_enc)[0]
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("decoder_norm", ["unit", "weighted"])
def test_gradients_reach_all_parameters(decoder_norm):
    sae = hand_sae(decoder_norm=decoder_norm)
    sae(X).loss.backward()
    for name, p in sae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
