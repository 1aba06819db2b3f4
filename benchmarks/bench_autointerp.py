"""Autointerp speed with the in-process explainer: where the time goes, before vs after.

    python benchmarks/bench_autointerp.py EXAMPLES --features 0,1 --before /work/main/src/saekit/autointerp/hf.py

EXAMPLES is a `saekit explain --collect-only` folder. Each variant explains and scores the same
features from scratch (a fresh answer cache) with the embedded SmolLM2-135M-Instruct, in one
process on one loaded model; variants alternate (``--rounds``) so they share the machine's load.
Variants: ``before`` (the ``HFClient`` of another checkout's ``hf.py``, e.g. main's) and ``after``
(this checkout's), each at every ``--threads`` count. Per variant: features per minute, and per
call kind (explain / scorer) the calls, seconds, mean prompt and answer tokens. Also checks
that both give the same explanations and answers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from saekit.autointerp import CachedClient, ExampleSet, run_autointerp
from saekit.autointerp.hf import HFClient
from saekit.models import load_model


class Timed:
    """Wraps a client: seconds, calls and tokens per call kind."""

    def __init__(self, client) -> None:
        self.client, self.name, self.concurrency = client, client.name, client.concurrency
        self.stats = defaultdict(lambda: defaultdict(float))

    def complete(self, messages, **kw):
        start = time.perf_counter()
        done = self.client.complete(messages, **kw)
        s = self.stats["scorer" if kw.get("binary_answers") else "explain"]
        s["seconds"] += time.perf_counter() - start
        s["calls"] += 1
        s["prompt_tokens"] += done.prompt_tokens
        s["answer_tokens"] += done.completion_tokens
        return done


def _load_before(path: str):
    spec = importlib.util.spec_from_file_location("saekit_hf_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.HFClient


def _answers(out: Path) -> dict:
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    return {r["feature"]: (r.get("explanation"),
                           [[a["prediction"] for a in v] for v in (r.get("answers") or {}).values()],
                           [a["probability"] for v in (r.get("answers") or {}).values() for a in v])
            for r in rows}  # fmt: skip


def _compare(a: dict, b: dict) -> str:
    """Same explanations and 0/1 answers? and the largest probability difference."""
    same = all(a[f][:2] == b[f][:2] for f in a) and a.keys() == b.keys()
    diff = max((abs(x - y) for f in a for x, y in zip(a[f][2], b[f][2], strict=False)
                if x is not None and y is not None), default=0.0)  # fmt: skip
    return f"identical explanations and answers: {same}; max |P diff| {diff:.2e}"


def per_call(lm, examples: ExampleSet, before_cls, rounds: int) -> None:
    """Seconds per scorer call, before vs after alternating: the 16 scorer prompts of the
    third feature (2 scorers x 2 explanations x 4 batches of 5)."""
    from saekit.autointerp import load_templates
    from saekit.autointerp.score import classifier_messages, scorer_samples

    templates, fe = load_templates(), examples.select(min(2, len(examples.feature_ids) - 1))
    prompts = []
    for scorer in ("detection", "fuzzing"):
        samples = scorer_samples(scorer, fe, 0)
        for expl in ("python keywords", "names of functions"):
            prompts += [classifier_messages(templates[scorer], expl, samples[i : i + 5])
                        for i in range(0, 20, 5)]  # fmt: skip
    clients = {"before": before_cls.from_model(lm.model, lm.tokenizer, "b"),
               "after": HFClient.from_model(lm.model, lm.tokenizer, "a")}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in clients}
    for rnd in range(rounds):
        for name in list(clients) if rnd % 2 == 0 else list(clients)[::-1]:
            start = time.perf_counter()
            for p in prompts:
                clients[name].complete(p, max_tokens=40, binary_answers=5)
            times[name].append((time.perf_counter() - start) / len(prompts))
    after = clients["after"]
    print(f"seconds per scorer call ({torch.get_num_threads()} threads, load "
          f"{os.getloadavg()[0]:.1f}):", {k: [round(x, 2) for x in v] for k, v in times.items()},
          f"after reused {after.reused_tokens} of {after.prompt_tokens} prompt tokens")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("examples")
    ap.add_argument(
        "--features", default="first2", help="'0,1', or 'firstN': the first N that fire"
    )
    ap.add_argument("--before", required=True, help="path of the hf.py to compare against")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--variants", default=None,
                    help="e.g. before:2,after:2,after:1 (variant:threads; default: every variant "
                    "at every --threads)")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the results here too")
    ap.add_argument("--per-call", type=int, default=0, metavar="ROUNDS",
                    help="only time scorer calls, before vs after, this many rounds")  # fmt: skip
    args = ap.parse_args()

    examples = ExampleSet.load(args.examples)
    if args.features.startswith("first"):
        usable = [f for n, f in enumerate(examples.feature_ids)
                  if len(examples.select(n).activating) >= 10]  # fmt: skip
        features = usable[: int(args.features[5:])]
    else:
        features = [int(f) for f in args.features.split(",")]
    lm = load_model("smollm2-135m")
    classes = {"before": _load_before(args.before), "after": HFClient}
    if args.per_call:
        torch.set_num_threads(int(args.threads.split(",")[0]))
        return per_call(lm, examples, classes["before"], args.per_call)
    rows, answers = defaultdict(list), {}
    if args.variants:
        plan = [(v.split(":")[0], int(v.split(":")[1])) for v in args.variants.split(",")]
    else:
        plan = [(n, int(t)) for t in args.threads.split(",") for n in classes]
    for rnd in range(args.rounds):
        for name, threads in plan if rnd % 2 == 0 else plan[::-1]:
            torch.set_num_threads(threads)
            timed = Timed(classes[name].from_model(lm.model, lm.tokenizer, "hf:smollm2-135m"))
            with tempfile.TemporaryDirectory() as tmp:
                client = CachedClient(timed, Path(tmp) / "cache")
                start = time.perf_counter()
                run_autointerp(examples, client, tmp, features=features)
                seconds = time.perf_counter() - start
                answers[name, threads, rnd] = _answers(Path(tmp))
            rows[name, threads].append({"seconds": seconds, "load": os.getloadavg()[0],
                                        "stats": {k: dict(v) for k, v in timed.stats.items()}})  # fmt: skip
            print(f"round {rnd} threads {threads} {name}: {seconds:.1f} s "
                  f"({60 * len(features) / seconds:.2f} features/min), load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    print(
        f"\n{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, features {features}, "
        f"{args.rounds} round(s); median over rounds"
    )
    print(
        "| variant | threads | features/min | explain: calls, s, prompt/answer tokens | "
        "scorer: calls, s, prompt/answer tokens |\n|---|---|---|---|---|"
    )
    report = []
    for (name, threads), runs in rows.items():
        sec = statistics.median(r["seconds"] for r in runs)
        cells = []
        for kind in ("explain", "scorer"):
            s = runs[0]["stats"].get(kind, {})
            n = max(s.get("calls", 0), 1)
            cells.append(f"{s.get('calls', 0):.0f}, {statistics.median(r['stats'].get(kind, {}).get('seconds', 0) for r in runs):.1f} s, "
                         f"{s.get('prompt_tokens', 0) / n:.0f}/{s.get('answer_tokens', 0) / n:.1f}")  # fmt: skip
        print(f"| {name} | {threads} | {60 * len(features) / sec:.2f} | {cells[0]} | {cells[1]} |")
        report.append({"variant": name, "threads": threads, "seconds": sec, "runs": runs})
    before = {k[2]: v for k, v in answers.items() if k[0] == "before"}  # per round
    same = {k: _compare(v, before[k[2]]) for k, v in answers.items()
            if k[0] == "after" and k[2] in before}  # fmt: skip
    print("after vs before:", same)
    if args.json:
        Path(args.json).write_text(json.dumps({"features": features, "rows": report,
                                               "same": {str(k): v for k, v in same.items()}}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
