"""batchtopk and matryoshka on hand-set weights (d_in=2, d_sae=3)."""

import torch

from saekit.saes import SAE

X = torch.tensor([[2.0, 1.0], [0.0, 2.0]])
WEIGHTS = {
    "W_enc": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]),
    "b_enc": torch.tensor([0.0, -1.0, -0.5]),
    "W_dec": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]),
    "b_dec": torch.zeros(2),
}
# pre-activations: [[2, 0, 2.5], [0, 1, 1.5]]


def hand_sae(arch: str = "batchtopk", **settings) -> SAE:
    """In training mode: the batch top-k (eval is the JumpReLU at `threshold`)."""
    sae = SAE.create(arch, d_in=2, d_sae=3, **settings).train()
    sae.load_state_dict({**WEIGHTS, "threshold": torch.zeros(3)})
    return sae


def test_training_keeps_k_times_batch_over_the_batch():
    sae = hand_sae(k=1, threshold_lr=0.5)
    out = sae(X)
    # the 2 largest of the 6 activations (2.5 and 2) both sit in row 1; row 2 gets none
    torch.testing.assert_close(out.feature_acts, torch.tensor([[2.0, 0.0, 2.5], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(out.sae_out, torch.tensor([[3.5, 2.0], [0.0, 0.0]]))
    # errors 3.25 and 4 -> 3.625, over variance 1.25
    torch.testing.assert_close(out.mse_loss, torch.tensor(3.625 / 1.25))


def test_threshold_is_a_running_average_of_the_smallest_kept_activation():
    sae = hand_sae(k=1, threshold_lr=0.5)
    sae(X)
    torch.testing.assert_close(sae.threshold, torch.full((3,), 1.0))  # 0.5 * 0 + 0.5 * 2
    sae(X)
    torch.testing.assert_close(sae.threshold, torch.full((3,), 1.5))  # 0.5 * 1 + 0.5 * 2
    sae.eval()
    before = sae.threshold.clone()
    f = sae.encode(X)
    # eval is a JumpReLU at 1.5: 2 and 2.5 pass, 1 and 1.5 (not strictly above) do not
    torch.testing.assert_close(f, torch.tensor([[2.0, 0.0, 2.5], [0.0, 0.0, 0.0]]))
    assert torch.equal(sae.threshold, before)  # eval leaves the threshold alone
    # and each row is encoded independently of the others
    torch.testing.assert_close(sae.encode(X[:1]), f[:1])


def test_default_threshold_lr():
    sae = hand_sae(k=1)
    sae(X)
    torch.testing.assert_close(sae.threshold, torch.full((3,), 0.01 * 2))


def test_auxk_batchtopk():
    sae = hand_sae(k=1, aux_k=1)
    assert sae(X, dead_mask=torch.zeros(3, dtype=torch.bool)).aux_loss == 0
    out = sae(X, dead_mask=torch.tensor([False, True, False]))
    residual = X - out.sae_out.detach()  # [[-1.5, -1], [0, 2]]
    rec = torch.tensor([[0.0, 0.0], [0.0, 1.0]])  # dead feature 1: relu(pre) = [0, 1]
    err = (rec - residual).pow(2).sum(1).mean()
    var = (residual - residual.mean(0)).pow(2).sum(1).mean()
    torch.testing.assert_close(out.aux_loss, err / var / 32)


def test_matryoshka_sums_prefix_losses():
    sae = hand_sae("matryoshka", k=2, prefixes=[1])
    assert sae.cfg.prefixes == [1, 3]
    out = sae(X)
    # k * B = 4 of the 6 activations survive: [[2, 0, 2.5], [0, 1, 1.5]]
    torch.testing.assert_close(out.feature_acts, torch.tensor([[2.0, 0.0, 2.5], [0.0, 1.0, 1.5]]))
    # prefix 1: [[2, 0], [0, 0]] -> errors 1 and 4 -> 2.5 / 1.25 = 2
    # full: [[3.5, 2], [0.9, 2.2]] -> errors 3.25 and 0.85 -> 2.05 / 1.25 = 1.64
    torch.testing.assert_close(out.mse_loss, torch.tensor(2.0 + 1.64))
    torch.testing.assert_close(out.sae_out, torch.tensor([[3.5, 2.0], [0.9, 2.2]]))


def test_matryoshka_prefix_gradients():
    sae = hand_sae("matryoshka", k=2, prefixes=[1])
    out = sae(X)
    # feature 0 serves both prefixes; its decoder gradient is the sum of both losses'
    g_total = torch.autograd.grad(out.mse_loss, sae.W_dec)[0]
    f = out.feature_acts.detach()
    var = 1.25
    g_full = 2 * f.T @ (out.sae_out.detach() - X) / 2 / var
    pre1 = f[:, :1] @ WEIGHTS["W_dec"][:1]
    g_pre1 = 2 * f[:, :1].T @ (pre1 - X) / 2 / var
    torch.testing.assert_close(g_total[0], g_full[0] + g_pre1[0])
    torch.testing.assert_close(g_total[1:], g_full[1:])
