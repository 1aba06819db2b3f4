"""The evaluation suite: core metrics, sparse probing and absorption for several SAEs at once.

SAEs that read the same hook share every model pass: one spliced-model evaluation
(`evaluate_saes`), one pass per labelled dataset (mean-pooled activations feed all SAEs and
the residual baselines), and one pass over the first-letter prompts (with one ground-truth
probe). Pooled activations and first-letter activations are cached on disk, so repeating a
run, or adding an SAE, costs no forward for what is already known.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from saekit.data.provenance import Provenance
from saekit.evals.conventions import sae_conventions
from saekit.evals.labelled import DEFAULT_DATASETS, TEST_PER_CLASS, TRAIN_PER_CLASS
from saekit.evals.pooling import PooledCache, _key, default_cache
from saekit.evals.probing import K_VALUES, run_sparse_probing

SUITES = ("core", "probing", "absorption")


@dataclass
class SuiteSettings:
    """What the suite runs and on how much data."""

    suites: tuple[str, ...] = SUITES
    datasets: tuple[str, ...] = DEFAULT_DATASETS
    k_values: tuple[int, ...] = K_VALUES
    train_per_class: int = TRAIN_PER_CLASS
    test_per_class: int = TEST_PER_CLASS
    probe_context: int = 128
    core_tokens: int = 16_384
    core_dataset: str | None = None
    core_context: int | None = None
    holdout_every: int | None = None
    absorption_words: int | None = 3000
    n_icl: int = 10
    words_per_prompt: int = 8
    absorption_max_k: int = 10
    batch_rows: int = 16
    seed: int = 42
    progress: bool = False
    cache: PooledCache | None = field(default=None, repr=False)
    baselines: Any = field(default=None, repr=False)  # a BaselineStore for the core metrics

    def __post_init__(self) -> None:
        unknown = [s for s in self.suites if s not in SUITES]
        if unknown:
            raise ValueError(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")


def _groups(saes: Mapping[str, torch.nn.Module]) -> dict[tuple[str, bool], dict[str, Any]]:
    """SAEs by (hook, prepend_bos): each group shares its model passes."""
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, sae in saes.items():
        conv = sae_conventions(sae)
        if not conv.hook_name:
            raise ValueError(f"SAE {name!r} names no hook (cfg.json metadata.hook_name)")
        groups.setdefault((conv.hook_name, conv.prepend_bos), {})[name] = sae
    return groups


def run_core(lm, saes: Mapping[str, Any], settings: SuiteSettings) -> dict[str, dict[str, Any]]:
    """Reconstruction, sparsity and spliced-model metrics (`evaluate_saes`), SAEBench names beside.

    Each SAE is evaluated on the held-back windows its provenance record names (dataset,
    context, BOS, special tokens, holdout rule; `core_dataset`, `core_context` and
    `holdout_every` override them); SAEs with the same record share every forward.
    """
    from saekit.data.provenance import token_batches
    from saekit.evals.evaluate import EvalTarget, evaluate_saes, scalar_metrics

    overrides = {"dataset": settings.core_dataset, "context": settings.core_context,
                 "holdout_every": settings.holdout_every}  # fmt: skip
    groups: dict[Provenance, dict[str, Any]] = {}
    for name, sae in saes.items():
        prov = Provenance.from_sae(sae)[0]
        prov = prov.replace(hooks=(), **{k: v for k, v in overrides.items() if v is not None})
        groups.setdefault(prov, {})[name] = sae
    results: dict[str, dict[str, Any]] = {}
    for prov, group in groups.items():
        part = "heldout" if prov.holdout_every else "all"
        batches = token_batches(prov, lm.tokenizer, settings.batch_rows, part)
        targets = {name: EvalTarget.of(sae) for name, sae in group.items()}
        out = evaluate_saes(targets, lm, batches, max_tokens=settings.core_tokens,
                            progress=settings.progress, baselines=settings.baselines)  # fmt: skip
        for name, result in out.items():
            metrics = scalar_metrics(result)
            results[name] = {
                "eval_type_id": "core",
                "eval_config": {
                    "dataset": prov.dataset,
                    "context_size": prov.context,
                    "tokens": settings.core_tokens,
                    "holdout_every": prov.holdout_every,
                    "exclude_special_tokens": prov.exclude_special_tokens,
                    "prepend_bos": prov.prepend_bos,
                },  # fmt: skip
                "saekit": metrics,
                "eval_result_metrics": saebench_core_names(metrics),
            }
    return results


def saebench_core_names(m: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """saekit's core metrics under SAEBench's core categories and key names.

    `kl_div_score` (and the ablated model's KL) appear when the core metrics hold them.
    """
    behavior = {"kl_div_with_sae": m["kl_div"]}
    for ours, theirs in (("kl_div_score", "kl_div_score"),
                         ("kl_div_zero_ablation", "kl_div_with_ablation")):  # fmt: skip
        if ours in m:
            behavior[theirs] = m[ours]
    return {
        "model_behavior_preservation": behavior,
        "model_performance_preservation": {
            "ce_loss_score": m["ce_loss_recovered"],
            "ce_loss_with_ablation": m["ce_loss_zero_ablation"],
            "ce_loss_with_sae": m["ce_loss_spliced"],
            "ce_loss_without_sae": m["ce_loss_clean"],
        },
        "reconstruction_quality": {
            "explained_variance": m["explained_variance"],
            "mse": m["mse"],
            "cossim": m["cos_sim"],
        },  # fmt: skip
        "shrinkage": {"l2_ratio": m["l2_ratio"]},
        "sparsity": {"l0": m["l0"]},
        "misc_metrics": {"frac_alive": 1 - m["dead_fraction"]},
    }


def run_absorption_suite(lm, saes: Mapping[str, Any], settings: SuiteSettings) -> dict[str, Any]:
    """First-letter data and probe per hook (cached), then absorption per SAE."""
    from saekit.evals.absorption import run_absorption
    from saekit.evals.first_letter import (
        LETTERS,
        FirstLetterData,
        collect_first_letter,
        letter_f1,
        train_letter_probe,
    )

    cache = settings.cache or PooledCache(None)
    results: dict[str, Any] = {}
    for (hook, prepend_bos), group in _groups(saes).items():
        opts = dict(n_words=settings.absorption_words, n_icl=settings.n_icl,
                    words_per_prompt=settings.words_per_prompt, prepend_bos=prepend_bos,
                    seed=settings.seed)  # fmt: skip
        key = _key("first-letter", 1, lm.spec, hook, opts)
        started = time.perf_counter()
        stored = cache.get(key)
        if stored is None:
            data = collect_first_letter(lm, hook, batch_rows=settings.batch_rows,
                                        progress=settings.progress, **opts)  # fmt: skip
            cache.put(key, asdict(data))  # type: ignore[arg-type]
        else:
            data = FirstLetterData(**stored)
        timings = {"activations": time.perf_counter() - started}
        started = time.perf_counter()
        probe = train_letter_probe(data.train_acts_ND, data.train_letters, seed=settings.seed)
        f1 = letter_f1(probe.scores(data.test_acts_MD), data.test_letters)
        timings["letter_probe"] = time.perf_counter() - started
        out = {}
        for name, sae in group.items():
            started = time.perf_counter()
            out[name] = run_absorption(
                {name: sae}, data, probe, max_k=settings.absorption_max_k, seed=settings.seed
            )[name]
            out[name]["timings_s"] = {k: round(v, 2) for k, v in timings.items()} | {
                "sae_probes": round(time.perf_counter() - started, 2)
            }
        for result in out.values():
            result["eval_config"] = {**opts, "hook": hook, "train_words": len(data.train_words),
                                     "test_words": len(data.test_words)}  # fmt: skip
            result["ground_truth_probe_f1"] = dict(zip(LETTERS, f1.tolist(), strict=True))
        results.update(out)
    return results


def run_suite(
    lm, saes: Mapping[str, torch.nn.Module], settings: SuiteSettings | None = None
) -> dict[str, dict[str, Any]]:
    """Every requested suite for every SAE: `{name: {"core": ..., "sparse_probing": ..., ...}}`.

    Each report's `timings_s` gives the wall time of each part; parts shared by SAEs on one
    hook are counted once and shown in each of them.
    """
    if settings is None:
        from saekit.evals.baseline import BaselineStore

        settings = SuiteSettings(cache=default_cache(), baselines=BaselineStore.default())
    if not saes:
        raise ValueError("no SAE to evaluate")
    reports: dict[str, dict[str, Any]] = {
        name: {
            "sae": name,
            "model": lm.spec,
            "hook_name": sae_conventions(sae).hook_name,
            "architecture": getattr(sae.cfg, "architecture", None),
            "provenance": Provenance.from_sae(sae)[0].to_dict(),
            "timings_s": {},
        }  # fmt: skip
        for name, sae in saes.items()
    }

    def record(part: str, started: float, results: Mapping[str, Any]) -> None:
        for name, value in results.items():
            reports[name][part] = value
            reports[name]["timings_s"][part] = round(time.perf_counter() - started, 2)

    if "core" in settings.suites:
        started = time.perf_counter()
        record("core", started, run_core(lm, saes, settings))
    if "probing" in settings.suites:
        for (hook, prepend_bos), group in _groups(saes).items():
            started = time.perf_counter()
            out = run_sparse_probing(
                lm, hook, group, settings.datasets, k_values=settings.k_values,
                train_per_class=settings.train_per_class, test_per_class=settings.test_per_class,
                context=settings.probe_context, prepend_bos=prepend_bos,
                batch_rows=settings.batch_rows, seed=settings.seed, cache=settings.cache,
                progress=settings.progress,
            )  # fmt: skip
            record("sparse_probing", started, out)
    if "absorption" in settings.suites:
        started = time.perf_counter()
        record("absorption_first_letter", started, run_absorption_suite(lm, saes, settings))
    return reports
