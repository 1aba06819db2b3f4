"""Steering quality and speed on a trained SAE.

    python benchmarks/bench_steering.py runs/saekit/blocks.15.hook_resid_pre
    python benchmarks/bench_steering.py SAE --features 50 --strengths 2,4,8 --new-tokens 64

Quality: take the features whose logit-lens effect is most concentrated on one token T
(z-score of the top token's logit weight, `saekit.steering.find.logit_concentration`), add
each one (`mode="add"`, strength in units of the feature's typical activation, all
positions) and read P(T) at the next position after a few neutral prompts. Reports the
fraction of features whose mean P(T) rose, and by how much.

Speed: greedy generation of `--new-tokens` tokens with the KV cache, plain vs steered
(`add`, and `clamp`, which encodes every new position with the SAE), plus plain generation
without the cache. Runs are interleaved and the median of `--repeats` is kept.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date

import torch

from saekit import load_model, load_sae
from saekit.models.generate import encode_prompts, generate_ids
from saekit.steering import Intervention, sae_source, steer
from saekit.steering.find import logit_concentration, typical_activations

PROMPTS = [
    "The",
    "I think that",
    "Here is a short note:",
    "In this section we describe",
    "She looked at the",
    "The next step is to",
    "My favourite thing is",
    "It was a long day, and",
]


def quality(sae, lm, n_features: int, strengths: list[float], typical) -> dict:
    """P(T) at the next position, default vs steered, for the most concentrated features."""
    top_F, z_F = logit_concentration(sae, lm)
    z_F = torch.where(typical.isfinite(), z_F, torch.full_like(z_F, -1.0))  # fired on calib.
    feats = z_F.topk(n_features).indices.tolist()
    ids, mask = encode_prompts(lm, PROMPTS, prepend_bos=sae_source(sae).prepend_bos)
    p_default_BV = lm.logits(ids, mask)[:, -1].softmax(-1)
    rows = []
    for f in feats:
        t = int(top_F[f])
        row = {"feature": f, "token": lm.tokenizer.decode([t]), "z": float(z_F[f]),
               "typical_act": float(typical[f]), "p_default": float(p_default_BV[:, t].mean())}  # fmt: skip
        for s in strengths:
            spec = Intervention(sae, {f: s}, units="act", typical_acts=typical)
            with steer(lm, [spec]):
                p = lm.logits(ids, mask)[:, -1].softmax(-1)[:, t]
            row[f"p_steered@{s:g}"] = float(p.mean())
            row[f"rose_prompts@{s:g}"] = int((p > p_default_BV[:, t]).sum())
        rows.append(row)
    summary = {}
    for s in strengths:
        rose = [r[f"p_steered@{s:g}"] > r["p_default"] for r in rows]
        gains = [r[f"p_steered@{s:g}"] - r["p_default"] for r in rows]
        ratios = [r[f"p_steered@{s:g}"] / max(r["p_default"], 1e-12) for r in rows]
        summary[f"{s:g}"] = {
            "fraction_rose": sum(rose) / len(rows),
            "fraction_prompt_pairs_rose": sum(r[f"rose_prompts@{s:g}"] for r in rows)
            / (len(rows) * len(PROMPTS)),
            "median_p_default": statistics.median(r["p_default"] for r in rows),
            "median_p_steered": statistics.median(r[f"p_steered@{s:g}"] for r in rows),
            "median_gain": statistics.median(gains),
            "median_ratio": statistics.median(ratios),
        }
    return {"features": rows, "by_strength": summary}


def speed(sae, lm, new_tokens: int, batch: int, repeats: int, typical) -> dict:
    """Tokens/s of greedy generation: plain, steered (add, clamp), and plain without cache."""
    ids, mask = encode_prompts(lm, (PROMPTS * batch)[:batch])
    f = int(typical.nan_to_num(-1).argmax())
    cases = {
        "plain": None,
        "add": Intervention(sae, {f: 4.0}, units="act", typical_acts=typical),
        "clamp": Intervention(sae, {f: 4.0}, mode="clamp", units="act", typical_acts=typical),
        "plain_no_cache": "no-cache",
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}

    def run(case):
        if case == "no-cache":
            return generate_ids(lm, ids, mask, new_tokens, use_cache=False, stop_at_eos=False)
        if case is None:
            return generate_ids(lm, ids, mask, new_tokens, stop_at_eos=False)
        with steer(lm, [case]):
            return generate_ids(lm, ids, mask, new_tokens, stop_at_eos=False)

    for case in cases.values():  # warm-up
        run(case)
    for _ in range(repeats):
        for name, case in cases.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            out = run(case)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            assert out.shape[1] == ids.shape[1] + new_tokens
    result = {}
    for name in cases:
        med, med_cpu = statistics.median(times[name]), statistics.median(cpu[name])
        result[name] = {
            "median_s": med,
            "median_cpu_s": med_cpu,
            "tokens_per_s": batch * new_tokens / med,
            "tokens_per_cpu_s": batch * new_tokens / med_cpu,
        }
    for name in ("add", "clamp"):
        for key in ("median_s", "median_cpu_s"):
            over = result[name][key] / result["plain"][key] - 1
            result[name]["overhead_" + key.removeprefix("median_")] = over
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sae", help="SAE folder")
    parser.add_argument("--model", help="default: the SAE's metadata.model_name")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--strengths", default="2,4,8", help="in typical activations")
    parser.add_argument("--calibration-texts", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", default="1,8", help="batch sizes for the speed test")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--skip-quality", action="store_true", help="only the speed test")
    parser.add_argument("--out", help="write the full result as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sae = load_sae(args.sae, device=args.device)
    lm = load_model(args.model or sae_source(sae).model_name, device=args.device)
    from itertools import islice

    from saekit.data import python_docs

    texts = list(islice(python_docs(), 1000, 1000 + args.calibration_texts))
    typical = typical_activations(sae, lm, texts, max_tokens=16_384)
    print("typical activations measured", flush=True)
    strengths = [float(s) for s in args.strengths.split(",")]
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''}, "
        f"{torch.get_num_threads()} torch threads, device {args.device}",
        "sae": args.sae,
        "quality": None
        if args.skip_quality
        else quality(sae, lm, args.features, strengths, typical),
        "speed": {
            f"batch{b}": speed(sae, lm, args.new_tokens, b, args.repeats, typical)
            for b in (int(x) for x in args.batches.split(","))
        },
    }
    for s, row in (result["quality"] or {"by_strength": {}})["by_strength"].items():
        print(f"add {s} x typical act: P(T) rose for {row['fraction_rose']:.0%} of features "
              f"({row['fraction_prompt_pairs_rose']:.0%} of feature-prompt pairs); median P(T) "
              f"{row['median_p_default']:.2e} -> {row['median_p_steered']:.2e} "
              f"(x{row['median_ratio']:.1f})")  # fmt: skip
    for b, rows in result["speed"].items():
        line = ", ".join(
            f"{k} {v['tokens_per_s']:.1f} tok/s ({v['tokens_per_cpu_s']:.1f} per CPU s)"
            for k, v in rows.items()
        )
        over = ", ".join(
            f"{k} {rows[k]['overhead_s']:+.1%} wall, {rows[k]['overhead_cpu_s']:+.1%} CPU"
            for k in ("add", "clamp")
        )
        print(f"{b}: {line}; steering overhead per token: {over}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
