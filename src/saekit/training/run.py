"""`train(cfg)`: wire model, data, SAEs, trainer, logging and checkpoints into one run."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saekit.data.provenance import Provenance, token_batches
from saekit.dtypes import DTYPES, model_dtype_note
from saekit.fileio import atomic_write_text, folder_lock
from saekit.models.loading import resolve_device
from saekit.saes.config import ARCH_SETTINGS
from saekit.training import distributed
from saekit.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from saekit.training.clt import CLTUnit, build_clt_unit, evaluate_replacement_units, initialize_clt
from saekit.training.config import DEFAULT_K, LoopSettings, TrainConfig
from saekit.training.data import open_data
from saekit.training.dead import FiringStats, dead_feature_method
from saekit.training.init import initialize_unit
from saekit.training.monitor import MetricsLog, ProgressBar, WandbLogger, phase
from saekit.training.report import run_title, summary_text, write_run_reports
from saekit.training.trainer import Callbacks, SAEUnit, Trainer, wants_approx_selection

EVAL_ROWS = 16  # held-back windows per evaluation forward


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    run_dir: Path
    sae_folders: dict[str, Path]
    final_metrics: dict[str, dict[str, float]]
    summary: str


@dataclass(frozen=True)
class UnitSpec:
    """One SAE of a (possibly swept) run."""

    name: str
    hook_in: str
    hook_out: str
    arch: str
    d_sae: int
    settings: tuple[tuple[str, Any], ...]


def sweep(
    cfg: TrainConfig, pairs: list[tuple[str, str]], dims: dict[str, int]
) -> list[UnitSpec]:
    """One UnitSpec per combination of (input, output) hooks, architecture, size and sparsity
    setting. With one combination per pair, each SAE is named after its input hook."""
    from saekit.saes import SAE_CLASSES, get_sae_class

    swept = {c.sparsity_setting for c in SAE_CLASSES.values()} & dict(cfg.sae_settings).keys()
    if swept:
        raise ValueError(f"set {', '.join(sorted(swept))} with --k / --l1, not --sae-setting")
    specs = []
    for (hook, hook_out), arch in itertools.product(pairs, cfg.archs):
        cls = get_sae_class(arch)
        d_saes = cfg.d_saes or (dims[hook] * (cfg.expansion_factor or 8),)
        if cls.sparsity_setting == "k":
            sparsity = [(("k", k),) for k in cfg.ks or (DEFAULT_K,)]
        elif cfg.l1s:
            sparsity = [((cls.sparsity_setting, c),) for c in cfg.l1s]
        else:
            sparsity = [()]  # the architecture's default coefficient
        for d_sae, setting in itertools.product(d_saes, sparsity):
            label = [f"{'k' if key == 'k' else 'c'}{value:g}" for key, value in setting]
            size = [f"d{d_sae}"] if len(d_saes) > 1 else []
            name = "-".join([hook, arch, *label, *size])
            own = [(key, v) for key, v in cfg.sae_settings if key in ARCH_SETTINGS[arch]]
            settings = (*setting, *own)  # a sweep's setting goes to the archs that have it
            defaults = cls.size_defaults(d_sae).items()
            settings += tuple((k, v) for k, v in defaults if k not in dict(settings))
            if cfg.skip:
                settings += (("skip", True),)
            specs.append(UnitSpec(name, hook, hook_out, arch, d_sae, settings))
    if len(specs) == len(pairs):  # one SAE per hook: named after it, like its folder
        return [dataclasses.replace(s, name=s.hook_in) for s in specs]
    return specs


def build_unit(spec: UnitSpec, cfg: TrainConfig, dims: dict[str, int], device) -> SAEUnit:
    """A fresh SAE (in training mode), its Adam optimizer and firing statistics."""
    from saekit.saes import SAE

    sae = SAE.create(
        spec.arch,
        d_in=dims[spec.hook_in],
        d_sae=spec.d_sae,
        d_out=dims[spec.hook_out],
        apply_b_dec_to_input=spec.hook_in == spec.hook_out,  # transcoders: input and output differ
        **dict(spec.settings),
    ).to(device).train()
    method = dead_feature_method(cfg.dead_feature_method, spec.arch)
    fused = torch.device(device).type in ("cpu", "cuda")  # one kernel per step: measured faster
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas, fused=fused)
    return SAEUnit(
        name=spec.name,
        hook_in=spec.hook_in,
        hook_out=spec.hook_out,
        sae=sae,
        optimizer=optimizer,
        firing=FiringStats(spec.d_sae, cfg.dead_after_tokens, device),
        use_dead_mask=method == sae.dead_feature_loss,
        resample=method == "resample",
        approx_selection=wants_approx_selection(cfg.approx_selection, sae, device),
    )


def raw_activation_sae(unit: SAEUnit) -> torch.nn.Module:
    """A copy of the unit's SAE that works on raw (unnormalised) activations."""
    if isinstance(unit, CLTUnit):
        return unit.raw_clt()
    sae = copy.deepcopy(unit.sae)
    sae.fold_activation_scale(unit.scale_in, unit.scale_out)
    sae.eval()
    return sae


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Run (or continue, with `resume`) the training described by `cfg`.

    Under torchrun, every rank calls this; rank 0 alone writes files (see distributed.py).
    """
    with distributed.process_group(cfg.dist_timeout, resolve_device(cfg.device)) as device:
        if not distributed.is_main():
            return _train(cfg, resume, device)
        with folder_lock(cfg.out):  # one writer per run folder, released on exit or death
            return _train(cfg, resume, device)


def check_run_folder(run_dir: Path, resume: bool) -> None:
    """Refuse to start over a run that can be continued or has finished.

    A folder whose run failed before its first checkpoint holds nothing worth keeping
    (no checkpoint, no SAE): a new run may start in it.
    """
    if resume:
        return
    if latest_checkpoint(run_dir) is not None:
        raise ValueError(
            f"run folder {run_dir} holds a run with a checkpoint; continue it with --resume "
            "or choose another --out"
        )
    if (run_dir / "summary.txt").exists() or any(run_dir.glob("*/cfg.json")):
        raise ValueError(f"run folder {run_dir} holds a finished run; choose another --out")


def _train(cfg: TrainConfig, resume: bool, device: torch.device) -> TrainResult:
    run_dir = Path(cfg.out)
    config_file = run_dir / "train_config.json"
    check_run_folder(run_dir, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    main = distributed.is_main()

    talk = cfg.progress and main
    source = f"activation cache {cfg.activations}" if cfg.activations else f"model {cfg.model}"
    with phase(f"loading {source}", talk):
        lm, buffer, pairs, dims, prov = open_data(cfg, device)
    if cfg.crosscoder:
        from saekit.training.crosscoder import build_crosscoder_unit

        units: list[SAEUnit] = [build_crosscoder_unit(cfg, [p[0] for p in pairs], dims, device)]
    elif cfg.cross_layer:
        units = [build_clt_unit(cfg, pairs, dims, device)]
    else:
        units = [build_unit(s, cfg, dims, device) for s in sweep(cfg, pairs, dims)]
    trainer = distributed.make_trainer(LoopSettings.of(cfg), units, cfg.sae_placement)
    trainer.generator.manual_seed(cfg.seed)
    log = MetricsLog(run_dir / "metrics.jsonl")

    first_fill_s = 0.0  # counted in the training time: its rows are trained on (SAELens counts
    if resume:  # its buffer's fill too)
        folder = latest_checkpoint(run_dir)
        if folder is None:
            raise FileNotFoundError(f"nothing to resume: {run_dir}/checkpoints holds no checkpoint")
        state = load_checkpoint(folder)
        trainer.load_state_dict(state["trainer"])
        buffer.load_state_dict(state["data"])
        if main:
            log.truncate_after(trainer.step)
    else:
        if main:
            log.path.unlink(missing_ok=True)
        first = f"computing the first {cfg.init_tokens:,} training tokens' activations"
        with phase(f"{first} and initialising", talk):  # `peek` reads that many rows
            filling = time.perf_counter()
            sample = buffer.peek(cfg.init_tokens)
            for unit in units:
                init = initialize_clt if isinstance(unit, CLTUnit) else initialize_unit
                init(unit, sample, cfg.normalize_activations, cfg.b_dec_init)
            first_fill_s = time.perf_counter() - filling
        if main:  # the run config records the provenance (a cache's, when training from one)
            recorded = cfg.replace(**{k: v for k, v in dataclasses.asdict(prov).items() if k != "hooks"})
            atomic_write_text(config_file, json.dumps(recorded.to_dict(), indent=2) + "\n")

    wandb_logger = (
        WandbLogger(cfg.wandb_project, run_dir.name, cfg.to_dict(), run_dir)
        if cfg.wandb and main
        else None
    )
    bar = ProgressBar(trainer.total_steps * cfg.batch_tokens, trainer.step * cfg.batch_tokens, talk)
    eval_batches = _eval_batches_factory(cfg, lm, prov, device, talk)
    eval_density: dict[str, torch.Tensor] = {}  # the latest evaluation's, for the report

    def on_log(step: int, tokens: int, per_sae: dict[str, dict[str, float]]) -> None:
        for name, metrics in per_sae.items():
            log.write({"kind": "train", "step": step, "tokens": tokens, "sae": name, **metrics})
        if wandb_logger:
            wandb_logger.log(step, per_sae)

    def evaluate(step: int, tokens: int, spread: bool = False) -> dict[str, dict[str, float]]:
        per_hook = [u for u in units if not isinstance(u, CLTUnit)]
        results = _evaluate_units(per_hook, cfg, eval_batches, spread) if per_hook else {}
        results |= evaluate_replacement_units(units, cfg, eval_batches, raw_activation_sae)
        for name, result in results.items():
            density = eval_density[name] = result.pop("log10_feature_density")
            result["eval_tokens"] = result.pop("tokens")  # "tokens" is the training position
            log.write({"kind": "eval", "step": step, "tokens": tokens, "sae": name, **result})
            if wandb_logger:
                wandb_logger.log_density(step, name, density)
        if wandb_logger and results:
            wandb_logger.log(step, results, prefix="eval/")
        return results

    def checkpoint(step: int, tokens: int) -> None:
        trainer.check_weights_finite()
        state = {"trainer": trainer.state_dict(), "data": buffer.state_dict()}
        save_checkpoint(run_dir, step, state)

    trainer.callbacks = Callbacks(
        on_log=on_log,
        on_eval=evaluate,
        on_checkpoint=checkpoint,
        on_progress=bar.update,
    )
    started = time.perf_counter()
    tokens_before = trainer.step * cfg.batch_tokens
    try:
        trainer.fit(iter(buffer))
    finally:
        bar.close()
    seconds = time.perf_counter() - started + first_fill_s
    trainer.check_weights_finite()
    # Replicated SAEs: every rank evaluates a share of the held-back text; else rank 0 alone.
    spread = distributed.rank_and_world()[1] > 1 and cfg.sae_placement == "replicate"
    if not distributed.collect(trainer):  # not rank 0: rank 0 evaluates and writes results
        if spread and eval_batches is not None:
            _evaluate_units([u for u in units if not isinstance(u, CLTUnit)], cfg, eval_batches, True)
        return TrainResult(run_dir, {}, {}, "")

    folders = _save_saes(units, trainer, run_dir, prov)  # before anything else can fail
    try:
        with phase("final evaluation on held-back text", talk and eval_batches is not None):
            final = evaluate(trainer.step, trainer.step * cfg.batch_tokens, spread)
    except (ValueError, RuntimeError, OSError) as err:
        warnings.warn(f"the final evaluation failed ({err}); the SAEs are saved", stacklevel=1)
        final = {}
    final_metrics = _final_metrics(units, trainer, log, final)
    total = trainer.step * cfg.batch_tokens  # what was trained: whole batches
    with phase("plotting", talk):
        write_run_reports(run_dir, log.read(), units, trainer, final_metrics, eval_density,
                          run_title(run_dir, prov.model, units, total))  # fmt: skip
    summary = summary_text(
        run_dir, total - tokens_before, seconds, final_metrics, folders, total_tokens=total,
        requested_tokens=cfg.tokens, dead_after_tokens=cfg.dead_after_tokens,
    )  # fmt: skip
    summary += "\n  " + model_dtype_note(prov.dtype, device)
    atomic_write_text(run_dir / "summary.txt", summary + "\n")
    if wandb_logger:
        wandb_logger.finish()
    return TrainResult(run_dir, folders, final_metrics, summary)


def _eval_batches_factory(cfg: TrainConfig, lm, prov: Provenance, device, talk: bool = False):
    """A function returning the model and fresh held-back token batches (with the run's
    store of evaluation baselines as `.baselines`), or None if evaluation is off."""
    if cfg.eval_tokens <= 0:
        return None
    if prov.holdout_every < 2:
        warnings.warn(
            f"no evaluation: holdout_every={prov.holdout_every} holds no document of "
            f"{prov.dataset!r} back from training, so there is no unseen text to evaluate on",
            stacklevel=2,
        )
        return None
    return _HeldBack(prov, lm, device, talk)


class _HeldBack:
    """Called: the model and fresh held-back token batches. `baselines` keeps the
    SAE-independent losses for the run's evaluations (and, on disk, for later runs)."""

    def __init__(self, prov: Provenance, lm, device, talk: bool = False) -> None:
        from saekit.evals.baseline import BaselineStore

        self.prov, self.lm, self.device, self.talk = prov, lm, device, talk
        self.baselines = BaselineStore.default()

    def __call__(self):
        if self.lm is None:  # training from a cache: load the model only to evaluate
            from saekit.models import load_model

            with phase(f"loading model {self.prov.model} to evaluate", self.talk):
                self.lm = load_model(self.prov.model, device=self.device, dtype=DTYPES[self.prov.dtype])
        return self.lm, token_batches(self.prov, self.lm.tokenizer, EVAL_ROWS, "heldout")


def _evaluate_units(units, cfg: TrainConfig, eval_batches, spread: bool = False) -> dict[str, dict[str, Any]]:
    """Every SAE on the held-back batches, sharing the model forwards (nothing if eval is off);
    with `spread`, shared across the torchrun ranks (every rank calls this; results on rank 0)."""
    if eval_batches is None or not units:
        return {}
    from saekit.evals import EvalTarget, evaluate_saes
    from saekit.evals.sharded import evaluate_across_ranks

    lm, batches = eval_batches()
    targets = {u.name: EvalTarget(raw_activation_sae(u), u.hook_in, u.hook_out) for u in units}
    common = dict(
        max_tokens=cfg.eval_tokens, ce_tokens=cfg.eval_ce_tokens or None,
        dense_threshold=cfg.dense_threshold,
    )  # fmt: skip
    if spread:
        results = evaluate_across_ranks(targets, lm, batches, **common) or {}
    else:
        results = evaluate_saes(
            targets, lm, batches, baselines=eval_batches.baselines, progress=cfg.progress, **common
        )
    return {
        name: {k: (v if isinstance(v, torch.Tensor) else float(v)) for k, v in result.items()}
        for name, result in results.items()
    }


def _save_saes(units, trainer: Trainer, run_dir: Path, prov: Provenance) -> dict[str, Path]:
    from saekit.evals.metrics import log10_feature_density

    folders = {}
    for unit in units:
        sae = raw_activation_sae(unit)
        prov.write_metadata(sae.cfg.metadata, unit.hook_in, unit.hook_out)
        if isinstance(unit, CLTUnit):  # every layer's (source's) hooks
            sae.cfg.metadata.extra |= unit.metadata_extra()
        folder = run_dir / unit.name
        sae.save(folder, sparsity=log10_feature_density(trainer.density(unit)))
        folders[unit.name] = folder
    return folders


def _final_metrics(units, trainer: Trainer, log: MetricsLog, final: dict) -> dict:
    """Per SAE: the last training metrics, overridden by the final evaluation's."""
    last_train: dict[str, dict] = {}
    for record in log.read():
        if record.get("kind") == "train":
            last_train[record["sae"]] = record
    out = {}
    for unit in units:
        merged = {k: v for k, v in last_train.get(unit.name, {}).items() if isinstance(v, float)}
        if "dead_fraction" in merged:  # the training window's figure, kept under its own name
            merged["train_dead_fraction"] = merged["dead_fraction"]
        merged.update(final.get(unit.name, {}))
        out[unit.name] = merged
    return out | {name: final[name] for name in final.keys() - out.keys()}  # the replacement
