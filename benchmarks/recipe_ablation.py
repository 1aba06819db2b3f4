"""What each ingredient of saekit's default TopK recipe is worth: train the default case with
the whole recipe, then once with each ingredient taken away, and evaluate every SAE on the same
held-back tokens.

    python benchmarks/recipe_ablation.py --out /tmp/ablation --activations CACHE_DIR [--live]

Default case: smollm2-135m, blocks.7.hook_resid_pre, topk k=32, d_sae 4608, 409,600 tokens,
batch 4096. With --activations (a `saekit cache` of that hook) every run reads the same cached
activations, so runs differ only in the recipe. `--live` adds the one ingredient a cache
cannot vary: BOS/EOS positions kept in training (the cache left them out), trained from the
live model. Training evaluates nothing; afterwards every SAE is evaluated on the same
held-back tokens with BOS/EOS left out, in one shared pass. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from saekit.training import TrainConfig, train

VARIANTS = {  # name -> the TrainConfig changes that take one ingredient away
    "saekit default recipe": {},
    "lr 4e-4 (SAELens's) instead of 3e-3": {"lr": 4e-4},
    "no lr decay (constant)": {"lr_schedule": "constant"},
    "b_dec at zero, not the data mean": {"b_dec_init": "zeros"},
    "no activation normalisation": {"normalize_activations": "none"},
    "no AuxK (dead features left alone)": {"dead_feature_method": "none"},
}
LIVE_VARIANTS = {"BOS/EOS positions trained on (live model)": {"exclude_special_tokens": False}}


def evaluate_all(folders: dict[str, Path], hook: str, eval_tokens: int) -> dict[str, dict]:
    """Every SAE on the same held-back tokens (BOS/EOS left out), sharing the model forwards."""
    from saekit.data.provenance import Provenance, token_batches
    from saekit.evals import EvalTarget, evaluate_saes
    from saekit.models import load_model
    from saekit.saes import SAE

    lm = load_model("smollm2-135m")
    targets = {name: EvalTarget(SAE.load(folder), hook, hook) for name, folder in folders.items()}
    batches = token_batches(Provenance(context=128), lm.tokenizer, 16, "heldout")
    return evaluate_saes(targets, lm, batches, max_tokens=eval_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs")
    parser.add_argument("--activations", help="activation cache of the hook (else live model)")
    parser.add_argument("--live", action="store_true", help="also the BOS-included live run")
    parser.add_argument("--hook", default="blocks.7.hook_resid_pre")
    parser.add_argument("--tokens", type=int, default=409_600)
    parser.add_argument("--eval-tokens", type=int, default=8_192)
    args = parser.parse_args()

    variants = [(name, changes, args.activations) for name, changes in VARIANTS.items()]
    if args.live:
        variants += [(name, changes, None) for name, changes in LIVE_VARIANTS.items()]
    folders, seconds = {}, {}
    for i, (name, changes, activations) in enumerate(variants):
        cfg = TrainConfig(
            hooks=(args.hook,), activations=activations, archs=("topk",), d_saes=(4608,),
            ks=(32,), tokens=args.tokens, eval_tokens=0, progress=False,
            out=str(args.out / f"variant{i}"), **changes,
        )  # fmt: skip
        started = time.perf_counter()
        train(cfg)
        seconds[name] = time.perf_counter() - started
        folders[name] = next(p for p in Path(cfg.out).iterdir() if (p / "cfg.json").is_file())
        print(f"trained {name!r} in {seconds[name]:.0f} s", flush=True)
    results = evaluate_all(folders, args.hook, args.eval_tokens)
    base = results[variants[0][0]]
    print("\n| recipe | EV | L0 | CE loss recovered | KL | dead | EV vs default | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        delta = r["explained_variance"] - base["explained_variance"]
        print(f"| {name} | {r['explained_variance']:.3f} | {r['l0']:.1f} | "
              f"{r['ce_loss_recovered']:.3f} | {r['kl_div']:.3f} | {r['dead_fraction']:.1%} | "
              f"{delta:+.3f} | {seconds[name]:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
