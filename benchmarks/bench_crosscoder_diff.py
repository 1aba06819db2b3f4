"""Model diffing with a crosscoder: the default model against a copy fine-tuned briefly on a
narrow text (Debian's Star Trek fortunes), at one residual hook.

Usage:
    PYTHONPATH=src python benchmarks/bench_crosscoder_diff.py [--out /tmp/cc-diff]
        [--fortunes startrek] [--finetune-steps 30] [--tokens 65536] [--hook blocks.15.hook_resid_pre]

Steps: (1) fine-tune a copy of smollm2-135m on the fortunes (every 4th fortune held back),
(2) write a mixed text (python-docs paragraphs and fortunes, interleaved), (3) train a
BatchTopK diffing crosscoder on it (`saekit train --crosscoder --diff-model`), (4) evaluate
it (`saekit eval`: shared / one-model features, histogram), (5) for the features the
crosscoder gives to the fine-tuned copy alone, compare their mean activation on held-back
fortunes with that on held-back python docs, and print their top tokens. One JSON line per
step with its seconds, then the summary.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from pathlib import Path

import torch

FORTUNES = Path("/usr/share/games/fortunes")


def fortunes(name: str) -> list[str]:
    text = (FORTUNES / name).read_text(encoding="utf-8", errors="replace")
    return [f.strip() for f in text.split("\n%\n") if f.strip()]


def log(**fields) -> None:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({**fields, "peak_rss_gib": round(rss, 2)}), flush=True)


def finetune(lm, texts: list[str], steps: int, lr: float, context: int, rows: int, seed: int):
    """A few AdamW steps of next-token loss on packed windows of `texts` (in place)."""
    tok = lm.tokenizer
    ids = [t for text in texts for t in tok(text + "\n")["input_ids"]]
    n = len(ids) // context
    windows = torch.tensor(ids[: n * context]).view(n, context)
    gen = torch.Generator().manual_seed(seed)
    model = lm.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        batch = windows[torch.randint(0, n, (rows,), generator=gen)]
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/cc-diff")
    parser.add_argument("--model", default="smollm2-135m", help="the base model")
    parser.add_argument("--fortunes", default="startrek")
    parser.add_argument("--finetune-steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--finetune-rows", type=int, default=8, help="64-token windows per step")
    parser.add_argument("--tokens", default="32768")
    parser.add_argument("--hook", default="blocks.15.hook_resid_pre")
    parser.add_argument("--k", default="32")
    parser.add_argument("--expansion-factor", default="4")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from saekit.cli import main as saekit
    from saekit.models import load_model

    texts = fortunes(args.fortunes)
    tune, held = [t for i, t in enumerate(texts) if i % 4], texts[::4]
    tuned_dir = out / "finetuned"
    started = time.perf_counter()
    if not (tuned_dir / "config.json").exists():
        lm = load_model(args.model)
        losses = finetune(lm, tune, args.finetune_steps, args.lr, 64, args.finetune_rows, seed=0)
        lm.model.save_pretrained(tuned_dir)
        lm.tokenizer.save_pretrained(tuned_dir)
        log(step="finetune", seconds=round(time.perf_counter() - started, 1),
            loss_first=round(losses[0], 3), loss_last=round(losses[-1], 3))  # fmt: skip

    from pydoc_data.topics import topics

    docs = [topics[k].strip() for k in sorted(topics)]
    mixed = docs[:]
    rng = random.Random(0)
    for t in tune:  # the held-back fortunes stay unseen by the fine-tune and the crosscoder
        mixed.insert(rng.randrange(len(mixed) + 1), t)
    (out / "mixed.txt").write_text("\n\n".join(p.replace("\n\n", "\n") for p in mixed) + "\n")

    run = out / "run"
    started = time.perf_counter()
    if not (run / "summary.txt").exists():
        code = saekit([
            "train", "--model", args.model, "--crosscoder", "--diff-model", str(tuned_dir), "--hook", args.hook,
            "--dataset", str(out / "mixed.txt"), "--arch", "batchtopk", "--k", args.k,
            "--expansion-factor", args.expansion_factor, "--tokens", args.tokens,
            "--batch-tokens", "2048", "--buffer-tokens", "16384", "--init-tokens", "4096",
            "--context", "128", "--threads", str(args.threads), "--no-progress", "--out", str(run),
        ] + (["--resume"] if (run / "checkpoints").exists() else []))  # fmt: skip
        assert code == 0
        log(step="train", seconds=round(time.perf_counter() - started, 1), tokens=args.tokens)
    started = time.perf_counter()
    assert saekit(["eval", str(run / "crosscoder"), "--tokens", "8192", "--out", str(out / "eval")]) == 0
    report = json.loads((out / "eval" / "eval.json").read_text())
    log(step="eval", seconds=round(time.perf_counter() - started, 1),
        **{k: report[k] for k in ("shared", "a_only", "b_only", "between", "dead", "fvu_per_source")})  # fmt: skip
    specific(run / "crosscoder", args.model, tuned_dir, held, docs[::20], report, out, args.hook)


@torch.no_grad()
def specific(folder, model, tuned_dir, fortunes_held, docs_held, report, out, hook) -> None:
    """Mean activation of the fine-tuned-only features on held-back fortunes vs python docs
    (both models' activations at the hook, as the crosscoder reads them), and top tokens."""
    from saekit.evals.crosscoder import training_unit_decoders
    from saekit.models import load_model
    from saekit.saes.crosscoder import Crosscoder, relative_decoder_norms

    cc = Crosscoder.load(folder)
    r_F = relative_decoder_norms(training_unit_decoders(cc))
    base, tuned = load_model(model), load_model(str(tuned_dir))
    tok = base.tokenizer
    feats = list(dict.fromkeys(report["b_only_features"][:15] + report["highest_r_features"][:5]
                               + report["a_only_features"][:3] + report["lowest_r_features"][:2]))
    means, top = {}, {f: [] for f in feats}
    for name, texts in (("fortunes", fortunes_held), ("python_docs", docs_held)):
        total, n = torch.zeros(cc.cfg.d_sae), 0
        for text in texts:
            ids = torch.tensor([[tok.bos_token_id or 0] + tok(text)["input_ids"][:127]])
            x = torch.stack([m.run_to_hooks(ids, [hook])[hook][0, 1:] for m in (base, tuned)], 1)
            f = cc.encode(x)
            total += f.sum(0)
            n += f.shape[0]
            if name == "fortunes":
                for j in feats:
                    for pos in f[:, j].nonzero().flatten().tolist():
                        top[j].append((f[pos, j].item(), tok.decode(ids[0, max(1, pos - 5) : pos + 2])))
        means[name] = total / max(n, 1)
    rows = []
    for j in feats:
        best = sorted(top[j], reverse=True)[:3]
        rows.append({
            "feature": j, "relative_norm": round(float(r_F[j]), 3),
            "mean_act_fortunes": round(means["fortunes"][j].item(), 4),
            "mean_act_python_docs": round(means["python_docs"][j].item(), 4),
            "top_fortune_contexts": [c for _, c in best],
        })  # fmt: skip
    (out / "specific_features.json").write_text(json.dumps(rows, indent=1))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
