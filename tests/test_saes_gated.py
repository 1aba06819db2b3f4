"""gated on hand-set weights (d_in=2, d_sae=3)."""

import math

import torch

from saekit.saes import SAE

X = torch.tensor([[2.0, 1.0], [0.0, 2.0]])


def hand_sae(**settings) -> SAE:
    sae = SAE.create("gated", d_in=2, d_sae=3, **settings)
    sae.load_state_dict({
        "W_enc": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]),
        "b_gate": torch.tensor([0.0, -1.0, -0.5]),
        "b_mag": torch.tensor([1.0, 0.0, -2.0]),
        "r_mag": torch.tensor([0.0, math.log(2.0), 0.0]),
        "W_dec": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]),
        "b_dec": torch.zeros(2),
    })  # fmt: skip
    return sae


def test_forward_by_hand():
    out = hand_sae(l1_coefficient=1.0)(X)
    # pi_gate = [[2, 0, 2.5], [0, 1, 1.5]] -> gate [[1, 0, 1], [0, 1, 1]]
    # pi_mag = x @ (W_enc * [1, 2, 1]) + b_mag = [[3, 2, 1], [1, 4, 0]]
    torch.testing.assert_close(out.feature_acts, torch.tensor([[3.0, 0.0, 1.0], [0.0, 4.0, 0.0]]))
    torch.testing.assert_close(out.sae_out, torch.tensor([[3.6, 0.8], [0.0, 4.0]]))
    # errors 2.6 and 4 -> 3.3; variance 1.25
    torch.testing.assert_close(out.mse_loss, torch.tensor(3.3 / 1.25))
    # L1 of relu(pi_gate): (4.5 + 2.5) / 2
    torch.testing.assert_close(out.sparsity_loss, torch.tensor(3.5))
    # aux: relu(pi_gate) decoded = [[3.5, 2], [0.9, 2.2]] -> errors 3.25, 0.85 -> 2.05 / 1.25
    torch.testing.assert_close(out.aux_loss, torch.tensor(2.05 / 1.25))
    torch.testing.assert_close(out.loss, out.mse_loss + out.sparsity_loss + out.aux_loss)


def test_aux_loss_freezes_the_decoder():
    sae = hand_sae()
    out = sae(X)
    g_dec, g_gate = torch.autograd.grad(out.aux_loss, [sae.W_dec, sae.b_gate], allow_unused=True)
    assert g_dec is None  # (b_dec still gets gradient through the input centring x - b_dec)
    assert g_gate.abs().sum() > 0


def test_gradients():
    sae = hand_sae()
    out = sae(X)
    # the reconstruction trains the magnitude path, not the gate bias
    g_mag, g_gate, g_r = torch.autograd.grad(
        out.mse_loss, [sae.b_mag, sae.b_gate, sae.r_mag], retain_graph=True, allow_unused=True
    )
    assert g_mag.abs().sum() > 0 and g_r.abs().sum() > 0 and g_gate is None
    out.loss.backward()
    for name, p in sae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not hasattr(sae, "b_enc")
