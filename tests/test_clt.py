"""Cross-layer transcoders: forward and loss against hand-written loops, files, training,
the memory check, SIGKILL resume and the replacement model."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import small_train_config
from saekit.saes.clt import CLTConfig, CrossLayerTranscoder, load_clt
from saekit.training.run import train
from saekit.training.transcoders import mlp_hooks

L, D, DO, F, K = 3, 6, 5, 16, 3


def random_clt(activation: str = "topk", seed: int = 0) -> CrossLayerTranscoder:
    torch.manual_seed(seed)
    clt = CrossLayerTranscoder(
        CLTConfig(n_layers=L, d_in=D, d_out=DO, d_sae=F, k=K, activation=activation)
    )
    with torch.no_grad():
        clt.b_enc.normal_(0, 0.1)
        clt.b_dec.normal_()
    return clt


def loop_forward(
    clt: CrossLayerTranscoder, x_BLD: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLT written as loops: per layer and token, top-k of the pre-activations, then each
    output layer sums the decoders of all earlier-or-equal layers."""
    B = x_BLD.shape[0]
    f = torch.zeros(B, L, F)
    for b in range(B):
        for i in range(L):
            pre = x_BLD[b, i] @ clt.W_enc[i] + clt.b_enc[i]
            top = sorted(range(F), key=lambda j: -pre[j].item())[:K]
            for j in top:
                f[b, i, j] = max(pre[j].item(), 0.0)
    y = torch.zeros(B, L, DO)
    for b in range(B):
        for out in range(L):
            y[b, out] = clt.b_dec[out]
            for src in range(out + 1):
                y[b, out] += f[b, src] @ clt.W_dec[src][:, out - src]
    return f, y


def test_clt_forward_equals_a_loop_over_layers():
    clt = random_clt()
    x_BLD, t_BLO = torch.randn(7, L, D), torch.randn(7, L, DO)
    with torch.no_grad():
        out = clt(x_BLD, t_BLO)
        f, y = loop_forward(clt, x_BLD)
    torch.testing.assert_close(out.feature_acts, f.flatten(1))
    torch.testing.assert_close(out.sae_out, y)
    per_layer = [((y[:, i] - t_BLO[:, i]) ** 2).sum() / ((t_BLO[:, i] - t_BLO[:, i].mean(0)) ** 2).sum()
                 for i in range(L)]  # fmt: skip
    torch.testing.assert_close(out.mse_loss, torch.stack(per_layer).sum())
    torch.testing.assert_close(out.loss, out.mse_loss)


def test_batchtopk_keeps_k_per_token_of_each_layer_on_average():
    clt = random_clt("batchtopk").train()
    out = clt(torch.randn(10, L, D), torch.randn(10, L, DO))
    f_BLF = out.feature_acts.view(10, L, F)
    assert [(f_BLF[:, i] > 0).sum().item() for i in range(L)] == [K * 10] * L
    assert (clt.threshold > 0).all()  # moved towards the smallest kept activation
    clt.eval()
    f_eval = clt.encode(torch.randn(4, L, D))
    pre = clt.pre_acts(torch.zeros(1, L, D))
    assert f_eval.shape == (4, L, F) and pre.shape == (1, L, F)


def test_auxk_reconstructs_the_residual_with_dead_features():
    clt = random_clt()
    x_BLD, t_BLO = torch.randn(8, L, D), torch.randn(8, L, DO)
    dead_LF = torch.zeros(L, F, dtype=torch.bool)
    dead_LF[:, :4] = True
    out = clt(x_BLD, t_BLO, dead_mask=dead_LF.flatten())
    with torch.no_grad():
        pre = clt.pre_acts(x_BLD)
        k_aux = 4  # min(d_in // 2 = 3 ... ) -> aux_k default d_in // 2 = 3
        k_aux = min(D // 2, 4)
        aux_f = torch.zeros_like(pre)
        for b in range(8):
            for i in range(L):
                vals = pre[b, i, :4].relu()
                top = vals.topk(k_aux).indices
                aux_f[b, i, top] = vals[top]
        aux_y = clt.decode(aux_f, bias=False)
        residual = t_BLO - out.sae_out
        expected = sum(((aux_y[:, i] - residual[:, i]) ** 2).sum()
                       / ((residual[:, i] - residual[:, i].mean(0)) ** 2).sum() for i in range(L))  # fmt: skip
    torch.testing.assert_close(out.aux_loss, clt.cfg.aux_coefficient * expected)
    out.loss.backward()
    assert clt.W_enc.grad is not None


def test_fold_activation_scale_keeps_features_and_rescales_outputs():
    clt = random_clt()
    s_in, s_out = torch.tensor([2.0, 0.5, 3.0]), torch.tensor([4.0, 1.5, 0.25])
    x_BLD = torch.randn(5, L, D)
    with torch.no_grad():
        f_scaled = clt.encode(x_BLD * s_in[:, None])
        y_scaled = clt.decode(f_scaled)
        clt.fold_activation_scale(s_in, s_out)
        torch.testing.assert_close(clt.encode(x_BLD), f_scaled)
        torch.testing.assert_close(clt.decode(clt.encode(x_BLD)), y_scaled / s_out[:, None])


def test_clt_folder_round_trip(tmp_path):
    clt = random_clt("batchtopk")
    clt.save(tmp_path / "clt")
    again = load_clt(tmp_path / "clt")
    x_BLD = torch.randn(4, L, D)
    assert again.cfg.to_dict() == clt.cfg.to_dict()
    with torch.no_grad():
        torch.testing.assert_close(
            again.decode(again.encode(x_BLD)), clt.eval().decode(clt.encode(x_BLD))
        )
    cfg = json.loads((tmp_path / "clt" / "cfg.json").read_text())
    assert cfg["architecture"] == "clt" and cfg["n_layers"] == L


def clt_cfg(model_dir, out, **changes):
    settings = dict(hooks=(), transcoders="1:4", cross_layer=True, expansion_factor=1, ks=(4,),
                    tokens=2048, eval_tokens=256, dead_after_tokens=1024)  # fmt: skip
    return small_train_config(model_dir, out, **{**settings, **changes})


def test_clt_trains_and_reports_the_replacement_model(tiny_model_dir, tmp_path):
    result = train(clt_cfg(tiny_model_dir, tmp_path / "run"))
    clt = load_clt(result.sae_folders["clt"])
    assert clt.cfg.n_layers == 3 and clt.cfg.d_sae == 64  # 1 x d_model
    meta = clt.cfg.metadata
    assert meta.extra["hook_names"] == [mlp_hooks(i)[0] for i in (1, 2, 3)]
    assert meta.extra["hook_names_out"] == [mlp_hooks(i)[1] for i in (1, 2, 3)]
    final = result.final_metrics["clt"]
    assert len(final["fvu_per_layer"]) == 3 and final["l0_per_layer"] == [4.0] * 3
    assert final["kl_div"] >= 0 and final["ce_loss_clean"] > 0


def test_memory_estimate_refuses_a_run_that_cannot_fit(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SAEKIT_MEMORY_LIMIT", "100000")
    with pytest.raises(MemoryError, match=r"lower d_sae \(--d-sae"):
        train(clt_cfg(tiny_model_dir, tmp_path / "run"))


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            dict(transcoders=None, hooks=("blocks.0.hook_resid_pre",)),
            "cross_layer needs transcoders",
        ),
        (dict(archs=("relu",)), "archs must be one of topk, batchtopk"),
        (dict(ks=(4, 8)), "at most one k"),
    ],
)
def test_cross_layer_settings_are_checked(tiny_model_dir, tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        clt_cfg(tiny_model_dir, tmp_path / "run", **changes)


def test_clt_resume_after_sigkill_is_bit_identical(tiny_model_dir, tmp_path):
    changes = dict(tokens=16_384, checkpoint_every=2048, eval_tokens=0)
    reference = train(clt_cfg(tiny_model_dir, tmp_path / "whole", **changes))
    cfg = clt_cfg(tiny_model_dir, tmp_path / "killed", **changes)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "saekit", "train", "--config", str(tmp_path / "cfg.json")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not (tmp_path / "killed" / "summary.txt").exists()
    resumed = train(cfg, resume=True)
    a = load_clt(reference.sae_folders["clt"]).state_dict_flat()
    b = load_clt(resumed.sae_folders["clt"]).state_dict_flat()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_replacement_with_zero_outputs_is_the_zero_ablation(tiny_lm):
    """A CLT that writes nothing: the replaced model is the MLP-ablated one (recovered 0)."""
    from saekit.evals.replacement import Replacement, evaluate_replacement

    hooks = [mlp_hooks(i) for i in range(4)]
    clt = CrossLayerTranscoder(CLTConfig(n_layers=4, d_in=64, d_sae=32, k=4)).eval()
    with torch.no_grad():
        for W in clt.W_dec:
            W.zero_()
    rep = Replacement.of_clt(clt, [h[0] for h in hooks], [h[1] for h in hooks])
    torch.manual_seed(0)
    ids_BT = torch.randint(3, 400, (2, 12))
    keep_BT = torch.ones(2, 12, dtype=torch.bool)
    result = evaluate_replacement(rep, tiny_lm, [(ids_BT, keep_BT)], max_tokens=24)
    assert result["ce_loss_replaced"] == pytest.approx(result["ce_loss_ablated"], rel=1e-5)
    assert result["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    assert result["l0_per_layer"] == [4.0] * 4 and result["tokens"] == 24
    acts = tiny_lm.run_to_hooks(ids_BT, [h[1] for h in hooks])
    for i, h in enumerate(hooks):  # FVU of a zero reconstruction: sum y^2 / sum (y - mean)^2
        y = acts[h[1]].reshape(-1, 64).double()
        expected = (y**2).sum() / ((y - y.mean(0)) ** 2).sum()
        assert result["fvu_per_layer"][i] == pytest.approx(expected.item(), rel=1e-4)


def test_clt_trains_from_a_disk_cache_with_tokens_aligned_across_layers(tiny_model_dir, tmp_path):
    """A cache of every layer's MLP input and output, read through the run's shuffle buffer:
    in each batch row, every layer's output is that layer's MLP applied to its input (so the
    rows of all hooks come from one token), and a CLT trains on it."""
    from saekit.data import build_cache
    from saekit.data.provenance import Provenance
    from saekit.models import load_model
    from saekit.training.data import open_data

    lm = load_model(str(tiny_model_dir))
    hooks = tuple(h for layer in (1, 2, 3) for h in mlp_hooks(layer))
    prov = Provenance(model=str(tiny_model_dir), hooks=hooks, context=32)
    build_cache(lm, prov, 4096, tmp_path / "cache", shard_tokens=1024, rows_per_forward=8,
                progress=False)  # fmt: skip
    cfg = clt_cfg(tiny_model_dir, tmp_path / "run", activations=str(tmp_path / "cache"),
                  eval_tokens=0, tokens=4096)  # fmt: skip
    _, buffer, pairs, _, _ = open_data(cfg, "cpu")
    assert pairs == [mlp_hooks(layer) for layer in (1, 2, 3)]
    batch = next(iter(buffer))
    layers = lm.model.model.layers
    with torch.no_grad():
        for layer, (hook_in, hook_out) in zip((1, 2, 3), pairs, strict=True):
            torch.testing.assert_close(layers[layer].mlp(batch[hook_in]), batch[hook_out],
                                       rtol=1e-4, atol=1e-5)  # fmt: skip
            shifted = batch[hook_in].roll(1, dims=0)  # rows of another token do not match
            assert not torch.allclose(layers[layer].mlp(shifted), batch[hook_out], atol=1e-3)
    result = train(cfg)
    clt = load_clt(result.sae_folders["clt"])
    assert clt.cfg.metadata.extra["hook_names"] == [p[0] for p in pairs]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["mse_loss"] for r in records if r["kind"] == "train"]
    assert len(losses) >= 2 and losses[-1] < losses[0]  # it learned


def test_data_parallel_placement_refuses_a_clt(monkeypatch):
    """Rescaling one summed loss by one variance ratio per rank is not exact for a CLT (one
    FVU per layer): under torchrun the replicate placement refuses it and names features."""
    from types import SimpleNamespace

    from saekit.training import distributed
    from saekit.training.config import LoopSettings

    clt = CrossLayerTranscoder(CLTConfig(n_layers=2, d_in=4, d_sae=8, k=2))
    unit = SimpleNamespace(name="clt", sae=clt, use_dead_mask=False)
    monkeypatch.setattr(distributed, "rank_and_world", lambda: (0, 2))
    with pytest.raises(ValueError, match="--sae-placement features"):
        distributed.make_trainer(LoopSettings(tokens=4096, batch_tokens=1024), [unit], "replicate")


def test_bfloat16_training_weights_save_float32_and_train_as_well(tiny_model_dir, tmp_path):
    """`--sae-setting dtype=bfloat16` keeps the CLT's weights, gradients and Adam state in
    bfloat16 (half the estimated memory); the saved CLT is float32 and reconstructs about as
    well as a float32 run on the same tokens, without being the same run."""
    from saekit.training.clt import memory_estimate

    full = CLTConfig(n_layers=30, d_in=576, d_sae=4608, k=32)
    half = CLTConfig(n_layers=30, d_in=576, d_sae=4608, k=32, dtype="bfloat16")
    for part in ("parameters", "gradients", "optimizer"):
        assert memory_estimate(half, 4096)[part] * 2 == memory_estimate(full, 4096)[part]
    runs = {
        dtype: train(clt_cfg(tiny_model_dir, tmp_path / dtype, sae_settings=(("dtype", dtype),)))
        for dtype in ("float32", "bfloat16")
    }
    clts = {dtype: load_clt(run.sae_folders["clt"]) for dtype, run in runs.items()}
    assert clts["bfloat16"].cfg.dtype == "float32" and clts["bfloat16"].W_enc.dtype == torch.float32
    assert not torch.equal(clts["bfloat16"].W_enc, clts["float32"].W_enc)
    fvus = {dtype: run.final_metrics["clt"]["fvu_per_layer"] for dtype, run in runs.items()}
    for a, b in zip(fvus["float32"], fvus["bfloat16"], strict=True):
        assert abs(a - b) < 0.05, fvus
    with pytest.raises(ValueError, match="dtype='float16' is not one of float32, bfloat16"):
        train(clt_cfg(tiny_model_dir, tmp_path / "f16", sae_settings=(("dtype", "float16"),)))


def test_bfloat16_weights_keep_float32_thresholds_and_fit_a_bfloat16_model(tiny_model_dir):
    """With bfloat16 weights the thresholds stay float32 (a 1% EMA step or a small Adam step
    must not round away), and the saved float32 CLT evaluates on a bfloat16 model."""
    from saekit.evals.replacement import Replacement, evaluate_replacement
    from saekit.models import load_model

    torch.manual_seed(0)
    clt = CrossLayerTranscoder(
        CLTConfig(
            n_layers=L, d_in=D, d_out=DO, d_sae=F, k=K, activation="batchtopk", dtype="bfloat16"
        )
    ).train()
    assert clt.W_enc.dtype == torch.bfloat16 and clt.threshold.dtype == torch.float32
    with torch.no_grad():
        clt.threshold.fill_(1.5)
        f_BLF = clt.activate(torch.full((4, L, F), 1.8, dtype=torch.bfloat16))
    kept = f_BLF.float().masked_fill(f_BLF == 0, float("inf")).amin(dim=(0, 2))
    torch.testing.assert_close(clt.threshold[:, 0], 0.99 * 1.5 + 0.01 * kept, rtol=0, atol=1e-6)
    assert (clt.threshold > 1.5).all()  # in bfloat16, 1.503 would have rounded back to 1.5

    jr = CrossLayerTranscoder(CLTConfig(n_layers=2, d_in=D, d_sae=F, activation="jumprelu",
                                        dtype="bfloat16", init_threshold=1.0))  # fmt: skip
    opt = torch.optim.Adam(jr.parameters(), lr=1e-4, fused=True)
    jr.train()(torch.randn(256, 2, D) * 3, torch.randn(256, 2, D)).loss.backward()
    before = jr.threshold.detach().clone()
    opt.step()
    assert jr.threshold.dtype == torch.float32 and not torch.equal(jr.threshold, before)

    lm = load_model(str(tiny_model_dir), dtype=torch.bfloat16)
    hooks = [mlp_hooks(i) for i in range(2)]
    saved = CrossLayerTranscoder(CLTConfig(n_layers=2, d_in=64, d_sae=32, k=4)).eval()
    rep = Replacement.of_clt(saved, [h[0] for h in hooks], [h[1] for h in hooks])
    ids_BT = torch.randint(3, 400, (2, 12))
    result = evaluate_replacement(
        rep, lm, [(ids_BT, torch.ones(2, 12, dtype=torch.bool))], max_tokens=24
    )
    assert all(math.isfinite(v) for v in result["fvu_per_layer"])
    assert math.isfinite(result["ce_loss_replaced"]) and result["l0_per_layer"] == [4.0, 4.0]


def test_bfloat16_weights_are_refused_with_feature_sharding(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="with sae_placement features train in float32"):
        clt_cfg(tiny_model_dir, tmp_path / "run", sae_placement="features",
                sae_settings=(("dtype", "bfloat16"),))  # fmt: skip
