"""The autointerp pipeline: explain every feature, then score each explanation and a shuffled one.

Output folder:

- ``run.json``: the settings and the LLM; a resumed run must use the same ones;
- ``explanations.jsonl``: one line per feature as soon as it is explained;
- ``results.jsonl``: one line per feature (explanation, scores, the shuffled baseline's scores,
  the example ids used and each answer), written as soon as the feature is scored;
- ``summary.json`` and ``scores.png`` (see :mod:`saekit.autointerp.summary`).

Features already in a file are skipped, so a killed run resumes where it stopped; with the
client's prompt cache (:class:`~saekit.autointerp.clients.CachedClient`) even the feature in
flight costs nothing again. The shuffled baseline scores each feature with the explanation of
another feature of the run (a seeded random cycle over the explained features).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from saekit.autointerp.clients import LLMClient
from saekit.autointerp.exampleset import ExampleSet, FeatureExamples
from saekit.autointerp.explain import explain
from saekit.autointerp.metrics import classification_metrics
from saekit.autointerp.prompts import Messages, load_templates
from saekit.autointerp.results import load_explanations, read_jsonl
from saekit.autointerp.score import SCORERS, classify, scorer_samples
from saekit.fileio import atomic_write_text


@dataclass(frozen=True)
class InterpSettings:
    """How features are explained and scored (recorded in ``run.json``)."""

    scorers: tuple[str, ...] = SCORERS
    n_explain: int = 10  # top windows shown to the explainer
    n_activating: int = 10  # quantile-sampled activating windows per scorer
    n_random: int = 10  # random non-activating windows per scorer
    n_hard: int = 0  # hard negatives (decoder neighbours fire) per scorer
    n_quantiles: int = 5
    per_prompt: int = 5  # windows per scorer prompt
    threshold: float = 0.3  # marked tokens: >= threshold x the window's max
    seed: int = 0
    explain_tokens: int = 60  # answer length limits
    score_tokens: int = 40
    logprobs: bool = True  # ask for token probabilities (AUC) where the client gives them

    def __post_init__(self) -> None:
        bad = [s for s in self.scorers if s not in SCORERS]
        if bad or not self.scorers:
            raise ValueError(f"--scorers {','.join(self.scorers)}: choose from {','.join(SCORERS)}")
        if self.per_prompt < 1 or self.n_explain < 1 or self.n_activating < 1:
            raise ValueError("--per-prompt, --n-explain and --n-activating must be positive")


def read_results(folder: str | Path) -> dict[int, dict]:
    """The records of a run by feature (see :func:`~saekit.autointerp.results.load_explanations`)."""
    return load_explanations(folder)


def _check_run(out: Path, record: dict[str, Any]) -> None:
    path = out / "run.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in record.items() if old.get(k) != v]
        if diff:
            raise ValueError(
                f"{out} holds a run with other settings ({'; '.join(diff)}); "
                f"use another --out or delete {path.parent / 'results.jsonl'} and run.json"
            )
    atomic_write_text(path, json.dumps(record, indent=1))


def _parallel(
    fn: Callable[[int], dict], items: Sequence[int], workers: int, desc: str, progress: bool
) -> Iterable[dict]:
    from tqdm.auto import tqdm

    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(items), desc=desc, unit="feature", disable=not progress) as bar,
    ):
        futures = [pool.submit(fn, i) for i in items]
        for fut in as_completed(futures):
            bar.update(1)
            yield fut.result()


def _append(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()


def shuffled_sources(features: Sequence[int], seed: int) -> dict[int, int]:
    """Feature -> the feature whose explanation it is scored with: a random cycle (no feature
    keeps its own; empty for fewer than two features)."""
    order = sorted(features)
    if len(order) < 2:
        return {}
    random.Random(seed).shuffle(order)
    return {f: order[(i + 1) % len(order)] for i, f in enumerate(order)}


def run_autointerp(
    examples: ExampleSet,
    client: LLMClient,
    out: str | Path,
    *,
    settings: InterpSettings | None = None,
    features: Sequence[int] | None = None,
    templates: dict[str, Messages] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Explain and score ``features`` (default: all collected); returns the summary."""
    from saekit.autointerp.summary import summarize, write_summary

    s = settings or InterpSettings()
    templates = templates or load_templates()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_run(out, {"llm": client.name, "settings": json.loads(json.dumps(asdict(s))),
                     "templates": templates})  # fmt: skip
    index = {f: n for n, f in enumerate(examples.feature_ids)}
    features = list(examples.feature_ids if features is None else features)
    missing = [f for f in features if f not in index]
    if missing:
        raise ValueError(f"features {missing[:5]} were not collected; collect them first")
    chosen: dict[int, FeatureExamples] = {
        f: examples.select(index[f], n_explain=s.n_explain, n_activating=s.n_activating,
                           n_random=s.n_random, n_hard=s.n_hard, n_quantiles=s.n_quantiles,
                           seed=s.seed)
        for f in features
    }  # fmt: skip
    n_tokens = examples.collected.stats.n_tokens
    start = time.perf_counter()

    # 1. explanations
    exp_path = out / "explanations.jsonl"
    explained = read_jsonl(exp_path)

    def explain_one(f: int) -> dict:
        fe = chosen[f]
        rec: dict[str, Any] = {"feature": f, "examples": [w.id for w in fe.explain]}
        if not fe.explain or not fe.activating:
            return rec | {"explanation": None, "skipped": f"fires too rarely in {n_tokens} tokens"}
        text, raw = explain(client, templates["explain"], fe.explain, fe.max_act,
                            threshold=s.threshold, max_tokens=s.explain_tokens)  # fmt: skip
        return rec | {"explanation": text, "raw": raw}

    todo = [f for f in features if f not in explained]
    for rec in _parallel(explain_one, todo, client.concurrency, "explain", progress):
        _append(exp_path, rec)
        explained[rec["feature"]] = rec

    # 2. scores: the real explanation and a shuffled one, on the same samples
    res_path = out / "results.jsonl"
    results = read_jsonl(res_path)
    has_text = [f for f in features if explained[f].get("explanation")]
    sources = shuffled_sources(has_text, s.seed)

    def score_one(f: int) -> dict:
        fe, ex = chosen[f], explained[f]
        rec: dict[str, Any] = {
            "feature": f, "explanation": ex.get("explanation"), "density": fe.density,
            "max_activation": fe.max_act,
            "examples": {"explain": [w.id for w in fe.explain],
                         "activating": [w.id for w in fe.activating],
                         "non_activating": [w.id for w in fe.non_activating]},
        }  # fmt: skip
        if not ex.get("explanation"):
            reason = ex.get("skipped") or f"unparsable explanation: {ex.get('raw', '')[:80]!r}"
            return rec | {"skipped": reason}
        rec["scores"], rec["answers"] = {}, {}
        other = sources.get(f)
        rec["shuffled"] = {
            "explanation_of": other,
            "explanation": explained[other]["explanation"] if other is not None else None,
        }
        for scorer in s.scorers:
            samples = scorer_samples(scorer, fe, s.seed, s.threshold)
            for key, text in (("scores", ex["explanation"]),
                              ("shuffled", rec["shuffled"]["explanation"])):  # fmt: skip
                if text is None:
                    continue
                judged = classify(client, templates[scorer], text, samples,
                                  per_prompt=s.per_prompt, logprobs=s.logprobs,
                                  max_tokens=s.score_tokens, retry=templates.get("retry"))  # fmt: skip
                rec[key][scorer] = classification_metrics(
                    [j.activating for j in judged],
                    [j.prediction for j in judged],
                    [j.probability for j in judged],
                ) | {"n_retried": sum(j.retried for j in judged)}
                if key == "scores":
                    rec["answers"][scorer] = [j.to_dict() for j in judged]
        return rec

    todo = [f for f in features if f not in results]
    for rec in _parallel(score_one, todo, client.concurrency, "score", progress):
        _append(res_path, rec)
        results[rec["feature"]] = rec

    elapsed = time.perf_counter() - start
    summary = summarize([results[f] for f in features], s.scorers)
    summary["run"] = {"llm": client.name, "features_this_call": len(todo),
                      "seconds_this_call": round(elapsed, 2),
                      "features_per_minute": round(60 * len(todo) / elapsed, 2)
                      if todo and elapsed > 0 else None,
                      **(client.counts() if hasattr(client, "counts") else {})}  # fmt: skip
    write_summary(out, summary, [results[f] for f in features], s.scorers)
    return summary
