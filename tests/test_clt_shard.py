"""A CLT sharded by features over 2 gloo ranks equals the unsharded CLT: reconstruction,
every loss part, each rank's gradient slice, and the weights after two Adam steps (topk,
batchtopk with AuxK; jumprelu with its tanh penalty and pre-activation loss)."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
import torch.distributed as dist

from saekit.saes.clt import CLTConfig, CrossLayerTranscoder
from saekit.saes.clt_shard import ShardedCLT, feature_slice

L, D, F, K, B = 3, 6, 16, 3, 12


def reference(activation: str) -> CrossLayerTranscoder:
    torch.manual_seed(0)
    if activation == "jumprelu":  # a wide kernel, so that thresholds get gradients
        settings = dict(
            l0_coefficient=0.05, pre_act_coefficient=0.01, bandwidth=0.5, init_threshold=0.3
        )
    else:
        settings = dict(k=K)
    clt = CrossLayerTranscoder(
        CLTConfig(n_layers=L, d_in=D, d_sae=F, activation=activation, **settings)
    )
    with torch.no_grad():
        clt.b_enc.normal_(0, 0.2)
        clt.b_dec.normal_()
    return clt.train()


def data(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    dead = torch.zeros(L, F, dtype=torch.bool)
    dead[:, [1, 5, 9, 12]] = True  # spans both ranks' slices
    return torch.randn(B, L, D, generator=g), torch.randn(B, L, D, generator=g), dead


def _check(rank: int, world: int, activation: str) -> dict:
    full = reference(activation)
    shard = ShardedCLT.from_full(full, rank, world)
    cut = feature_slice(F, rank, world)
    opt_full = torch.optim.Adam(full.parameters(), lr=1e-2)
    opt_shard = torch.optim.Adam(shard.parameters(), lr=1e-2)
    report = {}
    for step in range(2):
        x, t, dead = data(step)
        want = full(x, t, dead_mask=dead.flatten())
        got = shard(x, t, dead_mask=dead[:, cut].flatten())
        want.loss.backward()
        got.loss.backward()
        report[f"out{step}"] = (got.sae_out - want.sae_out).abs().max().item()
        feats_want = want.feature_acts.view(B, L, F)[:, :, cut]
        report[f"feats{step}"] = (got.feature_acts.view(B, L, -1) - feats_want).abs().max().item()
        for part in ("loss", "mse_loss", "sparsity_loss", "aux_loss"):
            report[f"{part}{step}"] = abs(getattr(got, part).item() - getattr(want, part).item())
        report[f"aux_nonzero{step}"] = (want.sparsity_loss + want.aux_loss).item() > 0
        grad_enc = shard.local.W_enc.grad - full.W_enc.grad[:, :, cut]
        report[f"grad_enc{step}"] = grad_enc.abs().max().item()
        report[f"grad_dec{step}"] = max(
            (shard.local.W_dec[i].grad - full.W_dec[i].grad[cut]).abs().max().item()
            for i in range(L)
        )
        report[f"grad_bdec{step}"] = (shard.local.b_dec.grad - full.b_dec.grad).abs().max().item()
        if activation == "jumprelu":
            assert full.threshold.grad.abs().sum() > 0, "the test must exercise the estimator"
            grad_t = shard.local.threshold.grad - full.threshold.grad[:, cut]
            report[f"grad_threshold{step}"] = grad_t.abs().max().item()
        opt_full.step(), opt_shard.step()
        full.after_optimizer_step(), shard.after_optimizer_step()
        opt_full.zero_grad(), opt_shard.zero_grad()
    gathered = shard.gather_full()
    if rank == 0:
        assert gathered is not None
        report["weights"] = max(
            (gathered.state_dict_flat()[k] - v).abs().max().item()
            for k, v in full.state_dict_flat().items()
        )
    return report


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        reports = {a: _check(rank, world, a) for a in ("topk", "batchtopk", "jumprelu")}
        torch.save(reports, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_the_unsharded_clt(tmp_path):
    ctx = multiprocessing.get_context("fork")  # cheap: modules are already imported
    out, init = str(tmp_path / "report"), str(tmp_path / "init")
    procs = [ctx.Process(target=_worker, args=(r, 2, init, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    for rank in range(2):
        for activation, report in torch.load(f"{out}.{rank}").items():
            assert report["aux_nonzero0"], "the test must exercise AuxK or the penalty"
            for key, value in report.items():
                if not key.startswith("aux_nonzero"):
                    assert value < 1e-5, (rank, activation, key, value)
            assert ("weights" in report) == (rank == 0)


def test_uneven_feature_split_is_refused():
    with pytest.raises(ValueError, match="divide evenly by 3 ranks"):
        feature_slice(16, 0, 3)


def test_feature_placement_under_two_ranks_equals_one_process(tiny_model_dir, tmp_path):
    """`--sae-placement features` with 2 ranks trains the same CLT as one process, logs the
    same losses, and a checkpoint resumes to the same weights."""
    import json
    import shutil

    from conftest import small_train_config
    from saekit.saes.clt import load_clt
    from saekit.training.run import train
    from test_distributed import run_ranks

    settings = dict(hooks=(), transcoders="1:4", cross_layer=True, expansion_factor=1, ks=(4,),
                    tokens=4096, eval_tokens=256, dead_after_tokens=512, checkpoint_every=2048,
                    sae_placement="features")  # fmt: skip
    one = train(small_train_config(tiny_model_dir, tmp_path / "one", **settings))
    run_ranks(small_train_config(tiny_model_dir, tmp_path / "two", **settings))
    a, b = load_clt(one.sae_folders["clt"]), load_clt(tmp_path / "two" / "clt")
    for key, value in a.state_dict_flat().items():
        torch.testing.assert_close(b.state_dict_flat()[key], value, rtol=1e-4, atol=1e-5)

    def losses(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [r[key] for r in rows if r["kind"] == "train" for key in ("loss", "l0")]

    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "two", copy)
    shutil.rmtree(copy / "clt")
    (copy / "summary.txt").unlink()
    run_ranks(small_train_config(tiny_model_dir, copy, **settings), resume=True)
    c = load_clt(copy / "clt")
    for key, value in b.state_dict_flat().items():
        assert torch.equal(c.state_dict_flat()[key], value), key
