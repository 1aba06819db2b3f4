"""End-to-end training on the tiny random Llama: outputs, resume after SIGKILL, sweeps, cache."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import small_train_config
from saekit.saes import SAE
from saekit.training.config import TrainConfig
from saekit.training.run import train


@pytest.fixture(autouse=True)
def eval_cache(tmp_path, monkeypatch):
    """Evaluation baselines go to a folder of the test, not the user's cache."""
    monkeypatch.setenv("SAEKIT_EVAL_CACHE", str(tmp_path / "eval-cache"))
    return tmp_path / "eval-cache"


def small_cfg(model_dir: Path, out: Path, **changes) -> TrainConfig:
    settings = dict(tokens=16_384, ks=(8,), eval_tokens=1024, dead_after_tokens=2048)
    return small_train_config(model_dir, out, **{**settings, **changes})


def cli_args(cfg: TrainConfig) -> list[str]:
    """The `saekit train` flags that reproduce `cfg` (for subprocess runs)."""
    args = ["--model", cfg.model, "--out", cfg.out, "--hook", ",".join(cfg.hooks)]
    for name in ("context", "tokens", "batch_tokens", "buffer_tokens", "forward_rows",
                 "init_tokens", "expansion_factor", "eval_tokens", "dead_after_tokens",
                 "log_every", "checkpoint_every", "threads", "seed"):
        if getattr(cfg, name) is not None:
            args += ["--" + name.replace("_", "-"), str(getattr(cfg, name))]
    args += ["--k", ",".join(map(str, cfg.ks)), "--no-progress"]
    return args


def test_train_tiny_model_leaves_a_usable_sae_folder(tiny_model_dir, tmp_path):
    result = train(small_cfg(tiny_model_dir, tmp_path / "run"))
    run = tmp_path / "run"
    folder = result.sae_folders["blocks.2.hook_resid_pre"]
    assert folder == run / "blocks.2.hook_resid_pre"
    for name in ("train_config.json", "metrics.jsonl", "summary.txt", "training_curves.png",
                 "feature_density.png"):
        assert (run / name).is_file(), name
    sae = SAE.load(folder)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (64, 256, 8)
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_resid_pre"
    assert sae.cfg.metadata.model_name == str(tiny_model_dir)
    sparsity = load_file(str(folder / "sparsity.safetensors"))["sparsity"]
    assert sparsity.shape == (256,) and (sparsity <= 0).all()

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(2, 33, 2))
    assert train_rows[-1]["explained_variance"] > train_rows[0]["explained_variance"]
    assert all(r["l0"] == pytest.approx(8.0) for r in train_rows)
    from saekit.saes.sparse import native_bf16

    if native_bf16("cpu"):  # auto: the pairs are chosen in bfloat16, and the run says how well
        assert all(0.9 < r["selection_agreement"] <= 1 for r in train_rows)
        assert "approx-selection: " in result.summary
    final_eval = [r for r in records if r["kind"] == "eval"][-1]
    assert final_eval["tokens"] == 16_384  # the training position of the evaluation
    assert final_eval["eval_tokens"] >= 1024 and 0 <= final_eval["dead_fraction"] <= 1
    # The saved SAE works on raw activations: its explained variance on held-back tokens,
    # computed here by hand, matches the run's final evaluation.
    from saekit.data import TokenWindows, iter_documents, iter_token_batches
    from saekit.models import load_model

    lm = load_model(str(tiny_model_dir))
    docs = iter_documents("builtin:python-docs", holdout_every=20, holdout=True)
    xs = []
    for ids, keep in iter_token_batches(TokenWindows(docs, lm.tokenizer, 32), 1):
        xs.append(lm.run_to_hooks(ids, ["blocks.2.hook_resid_pre"])["blocks.2.hook_resid_pre"][keep])
        if sum(len(x) for x in xs) >= 1024:
            break
    x = torch.cat(xs)
    with torch.no_grad():
        x_hat = sae(x).sae_out
    ev = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert len(x) == final_eval["eval_tokens"]  # whole windows until 1024 tokens are reached
    assert ev.item() == pytest.approx(final_eval["explained_variance"], abs=1e-5)
    assert "blocks.2.hook_resid_pre" in result.summary
    assert "model dtype: float32" in result.summary


def test_saekit_eval_agrees_with_the_runs_last_evaluation(tiny_model_dir, tmp_path, capsys,
                                                         eval_cache):
    from saekit.cli import main

    result = train(small_cfg(tiny_model_dir, tmp_path / "run", tokens=4096))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final_eval = [r for r in records if r["kind"] == "eval"][-1]
    cached = list(eval_cache.iterdir())
    assert len(cached) == 1  # the run's SAE-independent losses
    folder = result.sae_folders["blocks.2.hook_resid_pre"]
    assert main(["eval", str(folder), "--tokens", "1024", "--json"]) == 0
    assert list(eval_cache.iterdir()) == cached  # same model, hook and tokens: reused
    reported = json.loads(capsys.readouterr().out)
    for key in ("l0", "explained_variance", "ce_loss_clean", "ce_loss_spliced", "ce_loss_recovered",
                "kl_div", "dead_fraction", "explained_variance_se", "kl_div_se"):
        assert reported[key] == pytest.approx(final_eval[key], rel=1e-6, abs=1e-9), key
    assert reported["tokens"] == final_eval["eval_tokens"]


def test_periodic_evaluations_compute_the_baseline_once(tiny_model_dir, tmp_path, monkeypatch):
    """Three evaluations (two periodic, the final one) of one SAE on the same held-back tokens:
    the SAE-independent losses are computed once, and every evaluation's clean loss is equal."""
    from saekit.evals import evaluate as evaluate_module

    calls = []
    compute = evaluate_module.compute_baseline
    monkeypatch.setattr(evaluate_module, "compute_baseline",
                        lambda *args, **kw: calls.append(1) or compute(*args, **kw))  # fmt: skip
    train(small_cfg(tiny_model_dir, tmp_path / "run", tokens=3072, eval_every_tokens=1024))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert len(calls) == 1
    assert len({r["ce_loss_clean"] for r in evals}) == 1
    assert len({r["ce_loss_spliced"] for r in evals}) == 3  # the SAE changed between them


def test_existing_run_folder_is_not_overwritten(tiny_model_dir, tmp_path):
    """A finished run or one with a checkpoint is refused; a run that failed before its first
    checkpoint left nothing to keep, so a new run may start in its folder (it used to be
    neither retryable nor resumable)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text("{}")  # died before its first checkpoint
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    cfg = small_cfg(tiny_model_dir, run, tokens=4096, eval_tokens=0)
    train(cfg)
    with pytest.raises(ValueError, match="holds a finished run"):
        train(cfg)
    (run / "summary.txt").unlink()
    for sae in run.glob("*/cfg.json"):
        sae.unlink()
    (run / "checkpoints" / "step_00000001").mkdir(parents=True)
    (run / "checkpoints" / "step_00000001" / "state.json").write_text("{}")
    (run / "checkpoints" / "latest").write_text("step_00000001\n")
    with pytest.raises(ValueError, match="holds a run with a checkpoint; continue it with --resume"):
        train(cfg)


def test_a_second_writer_is_refused_while_the_first_lives(tiny_model_dir, tmp_path):
    """Two `saekit train` on one --out used to both 'succeed', interleaving metrics.jsonl."""
    import subprocess
    import sys
    import textwrap

    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from saekit.fileio import folder_lock
            with folder_lock({str(run)!r}):
                print("locked", flush=True)
                time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        cfg = small_cfg(tiny_model_dir, run, tokens=4096, eval_tokens=0)
        with pytest.raises(ValueError, match=rf"run folder {run} is in use \(pid {holder.pid}"):
            train(cfg)
    finally:
        holder.kill()
        holder.wait()
    train(cfg)  # the holder is gone: so is its lock
    assert (run / "summary.txt").is_file()


def _final_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "sae_weights.safetensors"))


def test_resume_after_sigkill_is_bit_identical(tiny_model_dir, tmp_path):
    """A run started with no checkpoint flag checkpoints by itself (every quarter of the run),
    so `--resume` after SIGKILL continues it bit-identically."""
    changes = dict(tokens=40_960, eval_tokens=0)
    assert small_cfg(tiny_model_dir, tmp_path / "x", **changes).checkpoint_every is None
    reference = train(small_cfg(tiny_model_dir, tmp_path / "whole", **changes))

    cfg = small_cfg(tiny_model_dir, tmp_path / "killed", **changes)
    proc = subprocess.Popen(
        [sys.executable, "-m", "saekit", "train", *cli_args(cfg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not (tmp_path / "killed" / "summary.txt").exists()  # it really died midway

    resumed = train(cfg, resume=True)
    name = "blocks.2.hook_resid_pre"
    whole, again = _final_weights(reference.sae_folders[name]), _final_weights(resumed.sae_folders[name])
    assert whole.keys() == again.keys()
    for key in whole:
        assert torch.equal(whole[key], again[key]), key
    steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no step logged twice across the kill


def test_sigterm_writes_a_checkpoint_and_exits(tiny_model_dir, tmp_path):
    cfg = small_cfg(tiny_model_dir, tmp_path / "run", tokens=400_000, eval_tokens=0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "saekit", "train", *cli_args(cfg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.stat().st_size) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 130
    assert "resume with --resume" in proc.stderr.read().decode()
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()


def test_sweep_trains_every_combination_from_one_stream(tiny_model_dir, tmp_path):
    cfg = small_cfg(
        tiny_model_dir, tmp_path / "run", hooks=("blocks.1.hook_resid_pre", "blocks.2.hook_resid_post"),
        archs=("topk", "relu"), ks=(4, 8), tokens=2048, eval_tokens=0,
    )
    result = train(cfg)
    assert sorted(result.sae_folders) == sorted([
        "blocks.1.hook_resid_pre-topk-k4", "blocks.1.hook_resid_pre-topk-k8",
        "blocks.1.hook_resid_pre-relu", "blocks.2.hook_resid_post-topk-k4",
        "blocks.2.hook_resid_post-topk-k8", "blocks.2.hook_resid_post-relu",
    ])
    sae = SAE.load(result.sae_folders["blocks.2.hook_resid_post-topk-k4"])
    assert sae.cfg.k == 4 and sae.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    assert SAE.load(result.sae_folders["blocks.1.hook_resid_pre-relu"]).cfg.architecture == "relu"


def test_transcoder_reads_one_hook_and_reconstructs_another(tiny_model_dir, tmp_path):
    cfg = small_cfg(
        tiny_model_dir, tmp_path / "run", hooks=("blocks.1.hook_resid_mid",),
        hook_out="blocks.1.hook_mlp_out", tokens=2048, eval_tokens=512,
    )
    result = train(cfg)
    sae = SAE.load(result.sae_folders["blocks.1.hook_resid_mid"])
    assert sae.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"
    assert sae.cfg.apply_b_dec_to_input is False


def test_training_from_a_cache(tiny_model_dir, tmp_path):
    from saekit.data import build_cache
    from saekit.data.provenance import Provenance
    from saekit.models import load_model

    lm = load_model(str(tiny_model_dir))
    prov = Provenance(model=str(tiny_model_dir), hooks=("blocks.2.hook_resid_pre",), context=24)
    build_cache(lm, prov, 8192, tmp_path / "cache", shard_tokens=1024, progress=False)
    cache = str(tmp_path / "cache")
    # A data setting that disagrees with the cache's record is an error naming it (it used
    # to be dropped silently); one that agrees is accepted.
    clash = small_cfg(tiny_model_dir, tmp_path / "clash", hooks=(), activations=cache, context=32)
    with pytest.raises(ValueError, match=r"other data settings \(context: 32 != 24"):
        train(clash)
    cfg = small_cfg(tiny_model_dir, tmp_path / "run", hooks=(), activations=cache, context=24,
                    tokens=8192, eval_tokens=512)
    result = train(cfg)
    sae = SAE.load(result.sae_folders["blocks.2.hook_resid_pre"])
    assert sae.cfg.metadata.model_name == str(tiny_model_dir)
    assert sae.cfg.metadata.context_size == 24
    assert result.final_metrics["blocks.2.hook_resid_pre"]["explained_variance"] > 0
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert Provenance.from_dict({k: saved[k] for k in Provenance().to_dict() if k != "hooks"}) == prov.replace(hooks=())


def test_a_failed_final_evaluation_keeps_the_trained_saes(tiny_model_dir, tmp_path):
    from pydoc_data.topics import topics

    docs = tmp_path / "docs.jsonl"  # 12 documents: every 20th is held back, so none is
    docs.write_text("".join(json.dumps({"text": topics[k]}) + "\n" for k in sorted(topics)[:12]))
    cfg = small_cfg(tiny_model_dir, tmp_path / "run", dataset=str(docs), tokens=2048)
    with pytest.warns(UserWarning, match="final evaluation failed"):
        result = train(cfg)
    assert SAE.load(result.sae_folders["blocks.2.hook_resid_pre"]).cfg.k == 8
    assert (tmp_path / "run" / "summary.txt").is_file()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(archs=("gated",), ks=(), dead_feature_method="resample", resample_every_tokens=1024),
         "resample needs a relu SAE"),
        (dict(sae_settings=(("k", 4),)), "set k with --k"),
    ],
)
def test_settings_a_run_cannot_honour_are_refused(tiny_model_dir, tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        train(small_cfg(tiny_model_dir, tmp_path / "run", tokens=1024, **changes))


def test_every_architecture_trains_from_one_model_pass(tiny_model_dir, tmp_path):
    archs = ("relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")
    cfg = small_cfg(tiny_model_dir, tmp_path / "run", archs=archs, tokens=4096, eval_tokens=512)
    result = train(cfg)
    assert len(result.sae_folders) == len(archs)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for name, folder in result.sae_folders.items():
        assert SAE.load(folder).cfg.architecture == name.split("-")[1]
        losses = [r["mse_loss"] for r in records if r["kind"] == "train" and r["sae"] == name]
        assert losses[-1] < losses[0], (name, losses)  # it learned
        final = result.final_metrics[name]
        assert final["eval_tokens"] >= 512 and final["explained_variance"] <= 1.0


def test_non_finite_loss_stops_with_the_step_named(tmp_path):
    from saekit.training.run import UnitSpec, build_unit
    from saekit.training.trainer import NonFiniteLossError, Trainer

    cfg = TrainConfig(out=str(tmp_path), tokens=512 * 6, batch_tokens=512, buffer_tokens=1024,
                      progress=False, checkpoint_every=512)
    unit = build_unit(UnitSpec("h", "h", "h", "topk", 32, (("k", 4),)), cfg, {"h": 8}, "cpu")
    batches = [{"h": torch.randn(512, 8)} for _ in range(6)]
    batches[3]["h"][5, 2] = float("nan")
    checkpoints = []
    trainer = Trainer(cfg, [unit])
    trainer.callbacks.on_checkpoint = lambda step, tokens: checkpoints.append(step)
    with pytest.raises(NonFiniteLossError, match="step 3: the loss of SAE 'h' is nan"):
        trainer.fit(iter(batches))
    assert checkpoints == [1, 2, 3]  # the last good state is step 3; nothing after it
    assert torch.isfinite(unit.sae.W_enc).all()


@pytest.mark.parametrize("setting", ["on", "off", "auto"])
def test_approx_selection_is_the_trainers_choice_and_is_reported(tmp_path, setting):
    """The trainer asks for bfloat16 pair selection (the SAE never chooses it by itself),
    measures its agreement with the exact choice and logs and summarises it."""
    import copy

    from saekit.saes.sparse import native_bf16, selection_agreement
    from saekit.training.report import summary_text
    from saekit.training.run import UnitSpec, build_unit
    from saekit.training.trainer import Trainer

    cfg = TrainConfig(out=str(tmp_path), tokens=512 * 3, batch_tokens=512, buffer_tokens=1024,
                      progress=False, log_every=1, approx_selection=setting)
    unit = build_unit(UnitSpec("h", "h", "h", "topk", 256, (("k", 4),)), cfg, {"h": 16}, "cpu")
    on = setting == "on" or (setting == "auto" and native_bf16("cpu"))
    assert unit.approx_selection == on and unit.sae.training
    relu = build_unit(UnitSpec("r", "r", "r", "relu", 256, ()), cfg, {"r": 16}, "cpu")
    assert not relu.approx_selection  # relu SAEs always choose exactly
    torch.manual_seed(0)
    batches = [{"h": torch.randn(512, 16) * 3} for _ in range(3)]
    expected = selection_agreement(copy.deepcopy(unit.sae), batches[0]["h"])
    logged = []
    trainer = Trainer(cfg, [unit])
    trainer.callbacks.on_log = lambda step, tokens, metrics: logged.append(metrics["h"])
    trainer.fit(iter(batches))
    assert len(logged) == 3
    summary = summary_text(tmp_path, 1, 1.0, {"h": logged[-1]}, {"h": tmp_path})
    if not on:
        assert all("selection_agreement" not in m for m in logged)
        assert "approx-selection" not in summary
        return
    assert logged[0]["selection_agreement"] == pytest.approx(expected)
    assert all(0.9 < m["selection_agreement"] <= 1 for m in logged)
    assert f"approx-selection: {logged[-1]['selection_agreement']:.2%} of the active" in summary


def test_wandb_offline_logs_metrics_and_density(tiny_model_dir, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged: dict[str, object] = {}
    real_log = wandb.Run.log

    def recording_log(self, data, *args, **kwargs):  # the real wandb call, keys recorded
        logged.update(data)
        return real_log(self, data, *args, **kwargs)

    monkeypatch.setattr(wandb.Run, "log", recording_log)
    cfg = small_cfg(tiny_model_dir, tmp_path / "run", tokens=2048, eval_tokens=512, wandb=True)
    train(cfg)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and next(runs[0].glob("*.wandb")).stat().st_size > 0
    name = "blocks.2.hook_resid_pre"
    for key in ("loss", "l0", "explained_variance", "dead_fraction", "eval/ce_loss_recovered",
                "eval/explained_variance"):
        assert isinstance(logged[f"{name}/{key}"], float), key
    assert isinstance(logged[f"{name}/log10_feature_density"], wandb.Histogram)


@pytest.mark.integration
def test_saekit_train_defaults_on_the_embedded_model(tmp_path, capsys):
    """`saekit train` with only the run length shortened: smollm2-135m, its middle hook."""
    from saekit.cli import main

    out = tmp_path / "run"
    assert main(["train", "--tokens", "8192", "--eval-tokens", "2048", "--out", str(out),
                 "--no-progress"]) == 0
    assert "blocks.15.hook_resid_pre" in capsys.readouterr().out
    sae = SAE.load(out / "blocks.15.hook_resid_pre")
    assert (sae.cfg.architecture, sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == ("topk", 576, 4608, 32)
    assert sae.cfg.metadata.model_name == "smollm2-135m"
