"""jumprelu on hand-set weights (d_in=2, d_sae=3), and its straight-through estimator."""

import math

import torch

from saekit.saes import SAE

X = torch.tensor([[2.0, 1.0], [0.0, 2.0]])
# pre-activations: [[2, 0, 2.5], [0, 1, 1.5]]


def hand_sae(**settings) -> SAE:
    sae = SAE.create("jumprelu", d_in=2, d_sae=3, bandwidth=2.0, **settings)
    sae.load_state_dict({
        "W_enc": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]),
        "b_enc": torch.tensor([0.0, -1.0, -0.5]),
        "W_dec": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]),
        "b_dec": torch.zeros(2),
        "threshold": torch.tensor([1.0, 0.5, 2.0]),
    })  # fmt: skip
    return sae


def test_forward_by_hand():
    out = hand_sae(l0_coefficient=0.1)(X)
    # pre > threshold: row 1: 2 > 1, 2.5 > 2; row 2: 1 > 0.5
    torch.testing.assert_close(out.feature_acts, torch.tensor([[2.0, 0.0, 2.5], [0.0, 1.0, 0.0]]))
    torch.testing.assert_close(out.sae_out, torch.tensor([[3.5, 2.0], [0.0, 1.0]]))
    # errors 3.25 and 1 -> 2.125; variance 1.25
    torch.testing.assert_close(out.mse_loss, torch.tensor(2.125 / 1.25))
    # L0 = (2 + 1) / 2
    torch.testing.assert_close(out.sparsity_loss, torch.tensor(0.1 * 1.5))


def test_l0_gradient_wrt_threshold_is_the_step_estimator():
    sae = hand_sae()
    out = sae(X, sparsity_coefficient=1.0)
    (g,) = torch.autograd.grad(out.sparsity_loss, sae.threshold)
    # K((pre - t) / eps) with eps = 2 is 1 where |pre - t| < 1:
    # feature 0: |1|, |-1| -> none; feature 1: -0.5, 0.5 -> both; feature 2: 0.5, -0.5 -> both
    # dL0/dt_i = -(1 / eps) * hits / B = -(1/2) * 2 / 2
    torch.testing.assert_close(g, torch.tensor([0.0, -0.5, -0.5]))
    # the step estimator passes no gradient to the pre-activations
    (g_enc,) = torch.autograd.grad(sae(X).sparsity_loss, sae.b_enc)
    assert g_enc.abs().sum() == 0


def test_jumprelu_gradient_wrt_threshold_and_input():
    sae = hand_sae()
    f = sae.encode(X)
    g_t, g_b = torch.autograd.grad(f.sum(), [sae.threshold, sae.b_enc])
    # df/dt_i = -(t_i / eps) * hits: feature 1: -(0.5 / 2) * 2; feature 2: -(2 / 2) * 2
    torch.testing.assert_close(g_t, torch.tensor([0.0, -0.5, -2.0]))
    # df/dpre = H(pre - t): active counts per feature over the batch
    torch.testing.assert_close(g_b, torch.tensor([1.0, 1.0, 1.0]))


def test_tanh_sparsity_mode():
    sae = hand_sae(sparsity_mode="tanh", tanh_scale=1.0, l0_coefficient=1.0)
    assert not sae.unit_norm_decoder
    with torch.no_grad():
        sae.W_dec[2] *= 2
    out = sae(X)
    expected = (math.tanh(2.0) + math.tanh(2.5 * 2) + math.tanh(1.0)) / 2
    torch.testing.assert_close(out.sparsity_loss, torch.tensor(expected))
    (g,) = torch.autograd.grad(out.sparsity_loss, sae.threshold)
    assert g[1] != 0 and g[2] != 0 and g[0] == 0


def test_threshold_stays_non_negative():
    sae = hand_sae()
    with torch.no_grad():
        sae.threshold[0] = -0.3
    sae.after_optimizer_step()
    assert sae.threshold[0] == 0
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(3))


def test_no_dead_feature_loss():
    sae = hand_sae()
    assert sae.dead_feature_loss is None
    assert sae(X, dead_mask=torch.ones(3, dtype=torch.bool)).aux_loss == 0


def test_negative_threshold_lets_no_negative_pre_activation_through():
    """A file from elsewhere may hold a negative threshold: the activation is
    relu(pre) * (pre > t), as SAELens and Gemma Scope define it, not pre * (pre > t)."""
    sae = hand_sae().double()
    with torch.no_grad():
        sae.threshold.copy_(torch.tensor([-1.0, -0.5, 0.3]))
    x = torch.tensor([[-0.5, 0.7], [0.4, 2.0], [-2.0, 0.0]], dtype=torch.float64)
    # pre = [x0, x1 - 1, x0 + x1 - 0.5]: [[-0.5, -0.3, -0.3], [0.4, 1.0, 1.9], [-2, -1, -2.5]]
    # row 0: above the threshold but negative in features 0 and 1 -> 0; row 2: below it
    expected_f = torch.tensor([[0, 0, 0], [0.4, 1.0, 1.9], [0, 0, 0]], dtype=torch.float64)
    W_dec = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    for mode in (sae.eval(), sae.train()):
        out = mode(x)
        torch.testing.assert_close(out.feature_acts, expected_f)
        torch.testing.assert_close(out.sae_out, expected_f @ W_dec)
    # no gradient through the zeroed pairs, and none to a negative threshold (its jump is 0)
    g_t, g_b = torch.autograd.grad(sae.encode(x).sum(), [sae.threshold, sae.b_enc])
    torch.testing.assert_close(g_b, torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    # K = 1 where |pre - t| < eps / 2 = 1: feature 2 (t = 0.3) has one such pair, pre = -0.3
    torch.testing.assert_close(g_t, torch.tensor([0.0, 0.0, -0.3 / 2], dtype=torch.float64))
    # batchtopk at inference is the same JumpReLU
    btk = SAE.create("batchtopk", d_in=2, d_sae=3, k=1, dtype="float64").eval()
    btk.load_state_dict(sae.state_dict())
    torch.testing.assert_close(btk(x).feature_acts, expected_f)
