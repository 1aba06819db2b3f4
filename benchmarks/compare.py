"""saekit side by side with SAELens and sparsify: the same case, back to back, one table.

Each trainer runs as its own process (the peers from their own virtual environments, with
the harnesses in /work/shared/anchors), so every number includes everything a user waits
for. Measured per run: wall time of the whole process, time of the training loop (as each
trainer reports it), peak RSS (from `os.wait4`), and then quality: every trained SAE is
loaded into saekit and evaluated by `saekit.evals.evaluate_sae` on the SAME held-back token
batches (every 20th document of builtin:python-docs, never trained on by any of them).
The peers train on the other 19 of every 20 documents, as saekit does.

Cases (issue 9): default (topk k=32, d_sae 4608), wide (d_sae 18432), sweep (k = 16, 32,
64, 128: saekit in one run, the peers in four), relu (L1 SAE; sparsify has none), cache
(saekit from a disk cache vs from the live model).

    python benchmarks/compare.py --case default --systems saekit,saelens,sparsify
    python benchmarks/compare.py --case wide --tokens 409600 --json results.jsonl

Peer environments: --saelens-python (default /tmp/anchor/venv/bin/python) and
--sparsify-python (default /tmp/anchor/sparsify-venv/bin/python); see
/work/shared/anchors/README.md for how to build them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

HOOK = "blocks.7.hook_resid_pre"  # = output of HF decoder layer 6 (the peers' model.layers.6)
LAYER = 6
ANCHORS = Path("/work/shared/anchors")
SAELENS_RUN = Path(__file__).resolve().parent / "saelens_run.py"  # the anchor's, with a device
CASES = {
    "default": {"arch": "topk", "d_sae": 4608, "ks": [32]},
    "wide": {"arch": "topk", "d_sae": 18432, "ks": [32]},
    "sweep": {"arch": "topk", "d_sae": 4608, "ks": [16, 32, 64, 128]},
    "relu": {"arch": "relu", "d_sae": 4608, "ks": []},
    "cache": {"arch": "topk", "d_sae": 4608, "ks": [32]},
}


def loadavg() -> float:
    return os.getloadavg()[0]


def run_timed(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict:
    """Run `cmd`, wait for it with `os.wait4`: wall seconds, peak RSS (MB), output text."""
    print(f"[{time.strftime('%H:%M:%S')}] load {loadavg():.2f} $ {shlex.join(cmd)}", flush=True)
    load = loadavg()
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    text = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[0]} failed (see {log}):\n{text[-3000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "load_before": load,
            "load_after": loadavg(), "output": text}  # fmt: skip


def train_corpus(path: Path) -> Path:
    """The training documents of builtin:python-docs (holdout excluded) as JSONL, for the peers."""
    if not path.exists():
        from saekit.data import iter_documents

        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            for doc in iter_documents("builtin:python-docs", holdout_every=20, holdout=False):
                fh.write(json.dumps({"text": doc}) + "\n")
        os.replace(tmp, path)
    return path


def run_saekit(case: dict, args, out: Path, extra: list[str] = ()) -> dict:
    cmd = [sys.executable, "-m", "saekit", "train", "--hook", HOOK, "--tokens", str(args.tokens),
           "--batch-tokens", "4096", "--context", "128", "--arch", case["arch"],
           "--d-sae", str(case["d_sae"]), "--eval-tokens", "0", "--no-progress",
           "--out", str(out), "--device", args.device, *extra]  # fmt: skip
    if case["ks"]:
        cmd += ["--k", ",".join(map(str, case["ks"]))]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += shlex.split(args.saekit_args)
    res = run_timed(cmd, out.with_suffix(".log"))
    m = re.search(r"([\d,]+) tokens in (\d+) s", (out / "summary.txt").read_text())
    res["train_s"] = float(m.group(2)) if m else None
    res["folders"] = {p.name: str(p) for p in sorted(out.iterdir()) if (p / "cfg.json").is_file()}
    return res


def run_saelens(case: dict, args, out: Path) -> dict:
    runs = [("standard", None)] if case["arch"] == "relu" else [("topk", k) for k in case["ks"]]
    return _sum_runs([
        run_timed(
            [args.saelens_python, str(SAELENS_RUN), str(args.corpus), arch,
             str(args.tokens), str(LAYER), str(case["d_sae"])] + ([str(k)] if k else []),
            out.parent / f"{out.name}_{arch}{k or ''}.log",
            env={**os.environ, "SAE_OUT": str(out / f"{arch}{k or ''}"),
                 "BENCH_DEVICE": args.device, **_buffer_env(args)},
        )
        for arch, k in runs
    ], out)  # fmt: skip


def _buffer_env(args) -> dict[str, str]:
    """SAELens's `n_batches_in_buffer` when one is given (else the harness's 128)."""
    if args.saelens_buffer_batches:
        return {"BENCH_BUFFER_BATCHES": str(args.saelens_buffer_batches)}
    return {}


def run_sparsify(case: dict, args, out: Path) -> dict:
    results = []
    for k in case["ks"]:
        ckpt = out / f"ckpt_k{k}"
        res = run_timed(
            [args.sparsify_python, str(ANCHORS / "sparsify_baseline.py"), str(args.corpus),
             str(args.tokens), str(LAYER), str(case["d_sae"]), str(k)],
            out.parent / f"{out.name}_k{k}.log",
            env={**os.environ, "SPARSIFY_CKPT": str(ckpt)},
        )  # fmt: skip
        layer_dirs = list(ckpt.glob(f"*/layers.{LAYER}"))
        res["folders"] = {f"k{k}": str(layer_dirs[0])}  # sparsify's own format
        results.append(res)
    return _sum_runs(results, out)


def _sum_runs(results: list[dict], out: Path) -> dict:
    """Several peer processes (a sweep) as one row: times add, RSS is the largest."""
    folders: dict[str, str] = {}
    train = 0.0
    for res in results:
        line = next(json.loads(x) for x in res["output"].splitlines() if x.startswith("{"))
        train += line["train_s"]
        folders.update(res.get("folders") or {})
    if not folders:  # SAELens folders, one per run
        folders = {p.name: str(p) for p in sorted(out.iterdir()) if (p / "cfg.json").is_file()}
    return {"wall_s": sum(r["wall_s"] for r in results), "train_s": train,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            "load_before": results[0]["load_before"], "load_after": results[-1]["load_after"],
            "folders": folders}  # fmt: skip


def run_cache(case: dict, args, out: Path) -> dict:
    """saekit trained from a disk cache (the cache build timed separately)."""
    cache = out.parent / "activation_cache"
    if not (cache / "manifest.json").exists():
        build = run_timed(
            [sys.executable, "-m", "saekit", "cache", "--hook", HOOK, "--tokens", str(args.tokens),
             "--out", str(cache), "--no-progress"], out.parent / "cache_build.log",
        )  # fmt: skip
        print(f"cache built in {build['wall_s']:.0f} s")
    return run_saekit(case, args, out, ["--activations", str(cache)])


def evaluate(folders: dict[str, str], system: str, args) -> dict[str, dict]:
    """Every SAE on the same held-back tokens, with saekit's evaluate_saes (shared forwards;
    the losses on all of them, as in the earlier tables)."""
    from saekit.data.provenance import Provenance, token_batches
    from saekit.evals import EvalTarget, evaluate_saes, scalar_metrics
    from saekit.io.converters import read_sae
    from saekit.models import load_model

    if "lm" not in _MODEL:
        _MODEL["lm"] = load_model("smollm2-135m", device=args.device)
    lm = _MODEL["lm"]
    fmt = "sparsify" if system == "sparsify" else None
    targets = {
        name: EvalTarget(read_sae(folder, fmt) if fmt else read_sae(folder), HOOK, HOOK)
        for name, folder in folders.items()
    }
    batches = token_batches(Provenance(context=128), lm.tokenizer, 16, "heldout")
    results = evaluate_saes(targets, lm, batches, max_tokens=args.eval_tokens, ce_tokens=None)
    keys = ("explained_variance", "l0", "ce_loss_recovered", "kl_div", "dead_fraction", "tokens")
    return {name: {k: scalar_metrics(r)[k] for k in keys} for name, r in results.items()}


_MODEL: dict = {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--case", choices=list(CASES), default="default")
    p.add_argument("--systems", default="saekit,saelens,sparsify")
    p.add_argument("--tokens", type=int, default=409_600)
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument("--threads", type=int, default=0, help="saekit --threads (0: torch default)")
    p.add_argument("--saekit-args", default="", help="extra flags for saekit train")
    p.add_argument("--out", type=Path, default=Path("/tmp/saekit-bench"))
    p.add_argument("--corpus", type=Path, default=None, help="peers' training JSONL")
    p.add_argument("--saelens-python", default="/tmp/anchor/venv/bin/python")
    p.add_argument("--sparsify-python", default="/tmp/anchor/sparsify-venv/bin/python")
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu or cuda: saekit, SAELens and the eval")
    p.add_argument("--saelens-buffer-batches", type=int, default=0,
                   help="SAELens n_batches_in_buffer (0: 128, the anchor's)")
    p.add_argument("--json", type=Path, help="append one JSON line per system here")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.corpus = args.corpus or train_corpus(args.out / "python_docs_train.jsonl")
    case = CASES[args.case]
    runners = {"saekit": run_saekit, "saelens": run_saelens, "sparsify": run_sparsify}
    if args.case == "cache":
        runners = {"saekit-live": run_saekit, "saekit-cache": run_cache}
        systems = list(runners)
    else:
        systems = args.systems.split(",")
        if args.case == "relu" and "sparsify" in systems:
            print("sparsify trains no relu/L1 SAE: skipped")
            systems.remove("sparsify")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for system in systems:  # back to back
        out = args.out / f"{args.case}-{system}-{stamp}"
        res = runners[system](case, args, out)
        res.pop("output", None)
        res.update(system=system, case=args.case, tokens=args.tokens * max(1, len(case["ks"])),
                   date=time.strftime("%Y-%m-%d %H:%M"), saekit_args=args.saekit_args)  # fmt: skip
        if not args.no_eval:  # after the run's timing, before the next run starts
            try:
                res["quality"] = evaluate(res["folders"], system.split("-")[0], args)
            except Exception as err:  # keep the timings even if one SAE cannot be read
                print(f"evaluation of {system} failed: {err!r}")
        rows.append(res)
        print(json.dumps(res), flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(res) + "\n")
    print_table(rows, args.tokens)


def print_table(rows: list[dict], tokens: int) -> None:
    print("| system | SAE | tok/s (process) | tok/s (loop) | peak RSS MB | EV | L0 | CE rec. | "
          "KL | dead | load |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        total = tokens * max(1, len(r.get("quality") or r["folders"]))
        for name, q in (r.get("quality") or {"-": {}}).items():
            loop = f"{total / r['train_s']:,.0f}" if r.get("train_s") else "-"
            print(f"| {r['system']} | {name} | {total / r['wall_s']:,.0f} | {loop} | "
                  f"{r['peak_rss_mb']:,.0f} | {q.get('explained_variance', float('nan')):.3f} | "
                  f"{q.get('l0', float('nan')):.1f} | {q.get('ce_loss_recovered', float('nan')):.3f} | "
                  f"{q.get('kl_div', float('nan')):.3f} | {q.get('dead_fraction', float('nan')):.1%} | "
                  f"{r['load_before']:.1f}/{r['load_after']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
