"""Data-parallel training with torch.distributed (gloo, 2 CPU processes) on the tiny Llama.

Ranks are forked from the test process (cheap: modules are already imported) with torchrun's
environment variables set; the failure test launches the real `saekit train --nproc 2`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import small_train_config
from saekit.training.config import TrainConfig
from saekit.training.run import train

SWEEP = dict(
    tokens=4096,
    ks=(4, 8),  # a sweep of two SAEs (needed by --sae-placement shard)
    eval_tokens=1024,  # under replicate, every rank evaluates a share of the held-back text
    eval_ce_tokens=0,
    dead_after_tokens=512,  # features silent for one step are dead: AuxK is active
    checkpoint_every=2048,
)


def cfg_for(model_dir: Path, out: Path, **changes) -> TrainConfig:
    return small_train_config(model_dir, out, **{**SWEEP, **changes})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, cfg: TrainConfig, resume: bool) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    train(cfg, resume=resume)


def run_ranks(cfg: TrainConfig, world: int = 2, resume: bool = False) -> None:
    """Run `train(cfg)` in `world` forked processes joined by a gloo process group."""
    ctx = multiprocessing.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, cfg, resume)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * world


def sae_weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    folders = sorted(p for p in run.iterdir() if (p / "sae_weights.safetensors").is_file())
    assert len(folders) == 2
    return {p.name: load_file(str(p / "sae_weights.safetensors")) for p in folders}


def train_losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


@pytest.fixture(scope="module")
def single_run(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    train(cfg_for(tiny_model_dir, out))
    return out


@pytest.fixture(scope="module")
def replicated_run(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("replicate") / "run"
    run_ranks(cfg_for(tiny_model_dir, out))
    return out


def test_two_ranks_equal_one_process(single_run, replicated_run):
    one, two = sae_weights(single_run), sae_weights(replicated_run)
    assert one.keys() == two.keys()
    for name in one:
        for key, value in one[name].items():
            torch.testing.assert_close(two[name][key], value, rtol=1e-4, atol=1e-5)
    # logged losses are those of the global batch (FVU over the global variance)
    assert train_losses(replicated_run) == pytest.approx(train_losses(single_run), rel=1e-4)
    # only rank 0 wrote: one line per SAE and logging step
    assert len(train_losses(replicated_run)) == 2 * 8 // 2


def eval_lines(run: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["sae"]: r for r in rows if r["kind"] == "eval"}


def test_final_evaluation_spread_over_ranks_equals_one_process(single_run, replicated_run):
    one, two = eval_lines(single_run), eval_lines(replicated_run)
    assert one.keys() == two.keys() and len(one) == 2
    for name, row in one.items():
        assert two[name]["eval_tokens"] == row["eval_tokens"] > 0
        for key in ("explained_variance", "l0", "ce_loss_recovered", "kl_div", "dead_fraction",
                    "ce_loss_recovered_se"):
            # the SAEs agree to 1e-4 (above); their metrics on the same text as closely
            assert two[name][key] == pytest.approx(row[key], rel=1e-3, abs=1e-4), (name, key)


def test_resume_under_two_ranks_is_exact(tiny_model_dir, replicated_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(replicated_run, copy)
    assert (copy / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    for folder in sae_weights(copy):
        shutil.rmtree(copy / folder)
    run_ranks(cfg_for(tiny_model_dir, copy), resume=True)
    resumed, full = sae_weights(copy), sae_weights(replicated_run)
    for name in full:
        for key, value in full[name].items():
            assert torch.equal(resumed[name][key], value), (name, key)
    assert train_losses(copy) == train_losses(replicated_run)


def test_shard_placement_equals_one_process(tiny_model_dir, single_run, tmp_path):
    run_ranks(cfg_for(tiny_model_dir, tmp_path / "run", sae_placement="shard"))
    one, two = sae_weights(single_run), sae_weights(tmp_path / "run")
    for name in one:
        for key, value in one[name].items():
            torch.testing.assert_close(two[name][key], value, rtol=1e-5, atol=1e-6)
    assert train_losses(tmp_path / "run") == pytest.approx(train_losses(single_run), rel=1e-5)


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [d for c in map(int, children) for d in (c, *_descendants(c))]


def test_killing_one_rank_ends_the_job_with_an_error(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = [
        sys.executable, "-m", "saekit", "train", "--nproc", "2", "--model", str(tiny_model_dir),
        "--out", str(out), "--hook", "blocks.2.hook_resid_pre", "--context", "32",
        "--tokens", "50M", "--batch-tokens", "512", "--buffer-tokens", "2048",
        "--init-tokens", "512", "--expansion-factor", "2", "--k", "4", "--eval-tokens", "0",
        "--log-every", "1", "--threads", "1", "--no-progress", "--dist-timeout", "30",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").stat().st_size:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        workers = [
            p for p in _descendants(proc.pid)
            if b"torch.distributed.run" not in Path(f"/proc/{p}/cmdline").read_bytes()
        ]  # fmt: skip
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=90)
    finally:
        for pid in [proc.pid, *_descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode != 0
    assert "Signal 9 (SIGKILL)" in stderr or "collective failed" in stderr, stderr[-3000:]
