"""The jumprelu cross-layer transcoder: forward, penalties and the threshold's
straight-through gradient against hand computations, the per-layer thresholds of the
replacement model, a short training run and `saekit eval` on its folder."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import small_train_config
from saekit.cli import main
from saekit.evals.replacement import Replacement
from saekit.saes.clt import CLTConfig, CrossLayerTranscoder, load_clt
from saekit.training.run import train

L, D, DO, F, B = 3, 5, 4, 6, 7


def random_jumprelu_clt(**settings) -> CrossLayerTranscoder:
    torch.manual_seed(0)
    cfg = CLTConfig(n_layers=L, d_in=D, d_out=DO, d_sae=F, activation="jumprelu", dtype="float64",
                    **settings)  # fmt: skip
    clt = CrossLayerTranscoder(cfg)
    with torch.no_grad():
        clt.b_enc.normal_(0, 0.3)
        clt.b_dec.normal_()
        clt.threshold.uniform_(0, 0.8)
    return clt


def test_forward_and_loss_equal_a_float64_loop_over_layers():
    lam, c, lam_pre = 0.02, 1.5, 0.003
    clt = random_jumprelu_clt(l0_coefficient=lam, tanh_scale=c, pre_act_coefficient=lam_pre)
    x, t = torch.randn(B, L, D, dtype=torch.float64), torch.randn(B, L, DO, dtype=torch.float64)
    with torch.no_grad():
        out = clt.train()(x, t)
    W_enc, b_enc, thr = clt.W_enc.tolist(), clt.b_enc.tolist(), clt.threshold.tolist()
    W_dec = [W.tolist() for W in clt.W_dec]  # [F][L - l][O] per layer l
    norm = [[math.sqrt(sum(v * v for row in W_dec[i][j] for v in row)) for j in range(F)]
            for i in range(L)]  # fmt: skip
    pre = [[[sum(x[b, i, d].item() * W_enc[i][d][j] for d in range(D)) + b_enc[i][j]
             for j in range(F)] for i in range(L)] for b in range(B)]  # fmt: skip
    f = [[[p if p > thr[i][j] and p > 0 else 0.0 for j, p in enumerate(pre[b][i])]
          for i in range(L)] for b in range(B)]  # fmt: skip
    y = torch.zeros(B, L, DO, dtype=torch.float64)
    for b in range(B):
        for dst in range(L):
            for o in range(DO):
                y[b, dst, o] = clt.b_dec[dst, o].item() + sum(
                    f[b][src][j] * W_dec[src][j][dst - src][o]
                    for src in range(dst + 1) for j in range(F)
                )  # fmt: skip
    torch.testing.assert_close(out.feature_acts, torch.tensor(f, dtype=torch.float64).flatten(1))
    torch.testing.assert_close(out.sae_out, y)
    fvus = [
        ((y[:, i] - t[:, i]) ** 2).sum() / ((t[:, i] - t[:, i].mean(0)) ** 2).sum()
        for i in range(L)
    ]
    tanh_sum = sum(
        math.tanh(c * f[b][i][j] * norm[i][j]) for b in range(B) for i in range(L) for j in range(F)
    )
    pre_sum = sum(
        max(-pre[b][i][j], 0.0) * norm[i][j] for b in range(B) for i in range(L) for j in range(F)
    )
    want_sparsity = lam * tanh_sum / B + lam_pre * pre_sum / B
    assert 0 < sum(v > 0 for row in f for layer in row for v in layer) < B * L * F  # some fire
    torch.testing.assert_close(out.mse_loss, torch.stack(fvus).sum())
    assert out.sparsity_loss.item() == pytest.approx(want_sparsity, rel=1e-12)
    assert out.loss.item() == pytest.approx(out.mse_loss.item() + want_sparsity, rel=1e-12)
    assert out.aux_loss.item() == 0.0
    clt.eval()  # inference: the same JumpReLU
    torch.testing.assert_close(clt.encode(x), out.feature_acts.view(B, L, F))


def tiny_clt(**settings) -> CrossLayerTranscoder:
    """Two layers, one feature each, width 1: layer 0 writes to layers 0 and 1 with decoder
    values 3 and 4 (norm 5), layer 1 to layer 1 with value 2 (norm 2); W_enc 1, b_enc 0."""
    clt = CrossLayerTranscoder(CLTConfig(n_layers=2, d_in=1, d_sae=1, activation="jumprelu",
                                         dtype="float64", **settings))  # fmt: skip
    with torch.no_grad():
        clt.W_enc.fill_(1.0)
        clt.b_enc.zero_()
        clt.W_dec[0].copy_(torch.tensor([[[3.0], [4.0]]]))
        clt.W_dec[1].copy_(torch.tensor([[[2.0]]]))
    return clt


def test_tanh_penalty_uses_the_concatenated_decoder_norm():
    clt = tiny_clt(l0_coefficient=0.01, tanh_scale=0.3, init_threshold=0.1)
    x = torch.tensor([[[0.5], [2.0]], [[0.05], [1.0]]], dtype=torch.float64)  # [B=2, L=2, D=1]
    out = clt(x, torch.randn(2, 2, 1, dtype=torch.float64))
    # token 0: a = (0.5, 2.0); token 1: a = (0 below its threshold 0.1, 1.0)
    want = (
        0.01 * (math.tanh(0.3 * 0.5 * 5) + math.tanh(0.3 * 2.0 * 2) + math.tanh(0.3 * 1.0 * 2)) / 2
    )
    assert out.sparsity_loss.item() == pytest.approx(want, rel=1e-12)
    out = clt(x, torch.randn(2, 2, 1, dtype=torch.float64), sparsity_coefficient=0.005)  # warm-up
    assert out.sparsity_loss.item() == pytest.approx(want / 2, rel=1e-12)


def test_threshold_gets_the_straight_through_gradient_of_the_penalty():
    lam, c, eps, t0 = 0.1, 0.7, 0.1, 0.3
    clt = tiny_clt(l0_coefficient=lam, tanh_scale=c, bandwidth=eps, init_threshold=t0)
    # layer 0 pre-activations 0.32 (fires, within eps/2), 0.27 (does not, within), 0.9 (outside)
    # layer 1: 0.9 everywhere, outside the window: no gradient
    x = torch.tensor([[[0.32], [0.9]], [[0.27], [0.9]], [[0.9], [0.9]]], dtype=torch.float64)
    out = clt.train()(x, torch.randn(3, 2, 1, dtype=torch.float64))
    out.sparsity_loss.backward()
    # d/dt of lam/B * sum_b tanh(c * n * a_b), with d a_b / d t = -(t / eps) in the window
    n = 5.0
    sech2 = [1 - math.tanh(c * n * a) ** 2 for a in (0.32, 0.0)]
    want = lam / 3 * sum(c * n * s * -(t0 / eps) for s in sech2)
    assert clt.threshold.grad[0, 0].item() == pytest.approx(want, rel=1e-12)
    assert clt.threshold.grad[1, 0].item() == 0.0
    with torch.no_grad():
        clt.threshold.fill_(-0.2)
    clt.after_optimizer_step()
    assert torch.equal(clt.threshold, torch.zeros(2, 1, dtype=torch.float64))


@pytest.mark.parametrize("activation", ["batchtopk", "jumprelu"])
def test_replacement_model_uses_each_layers_own_thresholds(activation):
    torch.manual_seed(1)
    cfg = CLTConfig(n_layers=L, d_in=D, d_sae=F, activation=activation,
                    k=2 if activation == "batchtopk" else None)  # fmt: skip
    clt = CrossLayerTranscoder(cfg).eval()
    with torch.no_grad():
        clt.threshold.copy_(torch.tensor([0.0, 0.6, 1.2])[:, None].expand(L, F))
    x = torch.randn(50, L, D)
    feats, _ = Replacement.of_clt(clt, ["in"] * L, ["out"] * L).outputs([x[:, i] for i in range(L)])
    pre = clt.pre_acts(x).detach()
    for i in range(L):
        want = torch.where(pre[:, i] > 0.6 * i, pre[:, i], 0.0)
        torch.testing.assert_close(feats[i], want)


def test_settings_are_checked():
    with pytest.raises(
        ValueError, match=r"k=4 is not used by activation='jumprelu'.*topk, batchtopk"
    ):
        CLTConfig(n_layers=2, d_in=4, d_sae=8, k=4, activation="jumprelu")
    with pytest.raises(ValueError, match="tanh_scale is a setting of activation jumprelu"):
        CLTConfig(n_layers=2, d_in=4, d_sae=8, k=4, tanh_scale=2.0)
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        CLTConfig(n_layers=2, d_in=4, d_sae=8, activation="jumprelu", bandwidth=0.0)
    cfg = CLTConfig(n_layers=2, d_in=4, d_sae=8, activation="jumprelu")
    assert (cfg.l0_coefficient, cfg.tanh_scale, cfg.bandwidth, cfg.init_threshold) == (
        1e-3, 4.0, 0.05, 0.01)  # fmt: skip  # the single-hook JumpReLU's defaults
    assert cfg.pre_act_coefficient == 0.0
    clt = CrossLayerTranscoder(cfg)
    assert clt.sparsity_setting == "l0_coefficient" and clt.sparsity_coefficient == 1e-3
    assert clt.dead_feature_loss is None and not clt.batch_dependent
    assert torch.equal(clt.threshold.detach(), torch.full((2, 8), 0.01))


def test_jumprelu_clt_trains_saves_and_evaluates(tiny_model_dir, tmp_path, capsys):
    cfg = small_train_config(
        tiny_model_dir, tmp_path / "run", hooks=(), transcoders="1:4", cross_layer=True,
        archs=("jumprelu",), expansion_factor=1, l1s=(2e-3,), tokens=4096, eval_tokens=256,
        sae_settings=(("pre_act_coefficient", 1e-4), ("bandwidth", 0.1)),
    )  # fmt: skip
    result = train(cfg)
    clt = load_clt(result.sae_folders["clt"])
    assert clt.cfg.activation == "jumprelu" and clt.cfg.k is None
    assert (clt.cfg.l0_coefficient, clt.cfg.pre_act_coefficient, clt.cfg.bandwidth) == (
        2e-3,
        1e-4,
        0.1,
    )
    assert (clt.threshold >= 0).all() and not torch.equal(
        clt.threshold, torch.full_like(clt.threshold, 0.01)
    )
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert all(r["sparsity_loss"] > 0 for r in train_rows)
    final = result.final_metrics["clt"]
    assert len(final["fvu_per_layer"]) == 3 and final["ce_loss_clean"] > 0
    assert main(["eval", str(result.sae_folders["clt"]), "--tokens", "200", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "clt" and len(report["l0_per_layer"]) == 3


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(ks=(4,)), r"arch jumprelu: k is not used .*k is for arch topk, batchtopk"),
        (dict(dead_feature_method="auxk"), r"dead_feature_method must be auto, none, not auxk"),
        (
            dict(sae_settings=(("aux_k", 4),)),
            r"may be bandwidth, init_threshold, tanh_scale, pre_act",
        ),
        (dict(sae_settings=(("l0_coefficient", 0.1),)), r"set l0_coefficient with l1"),
        (dict(l1s=(1e-3, 2e-3)), "at most one k, l1 and d_sae"),
    ],
)
def test_cross_layer_jumprelu_settings_are_checked(tiny_model_dir, tmp_path, changes, message):
    settings = dict(hooks=(), transcoders="1:4", cross_layer=True, archs=("jumprelu",))
    with pytest.raises(ValueError, match=message):
        small_train_config(tiny_model_dir, tmp_path / "run", **{**settings, **changes})


def test_k_with_jumprelu_is_refused_on_the_command_line(tiny_model_dir, tmp_path, capsys):
    argv = ["train", "--model", str(tiny_model_dir), "--transcoders", "1:3", "--cross-layer",
            "--arch", "jumprelu", "--k", "8", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    assert "k is not used" in capsys.readouterr().err
