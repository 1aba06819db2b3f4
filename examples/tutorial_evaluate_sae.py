"""Tutorial: evaluate an SAE -- sparsity (L0), reconstruction, CE loss recovered, a dashboard.

Run it on your own SAE folder (from `saekit train`):

    python examples/tutorial_evaluate_sae.py --sae runs/saekit/<sae-name> --out tutorial-out

or with no --sae: it first trains a small TopK SAE on the embedded default model
(smollm2-135m) over a few tens of thousands of tokens, offline. Such a short run gives a rough
SAE, but every step below works the same on a well-trained one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit import load_model, load_sae
from saekit.analysis import build_dashboard
from saekit.data import TokenWindows, iter_documents, iter_token_batches
from saekit.data.datasets import HOLDOUT_EVERY  # the documents `saekit train` holds back
from saekit.evals import evaluate_sae


def get_sae(args):
    """Load --sae, or train a small SAE on --model (the public training API)."""
    if args.sae:
        return load_sae(args.sae)
    from saekit.training.config import TrainConfig
    from saekit.training.run import train

    cfg = TrainConfig(
        model=args.model,
        out=str(Path(args.out) / "train-run"),
        tokens=args.train_tokens,
        context=args.context,
        ks=(16,),
        expansion_factor=4,
        batch_tokens=1024,
        buffer_tokens=8192,
        init_tokens=2048,
        eval_tokens=0,
        device="cpu",
        progress=False,
    )
    result = train(cfg)
    (folder,) = result.sae_folders.values()
    print(f"trained an SAE on {args.train_tokens:,} tokens -> {folder}")
    return load_sae(folder)


def held_back_batches(sae, lm, dataset: str | None = None, rows: int = 8):
    """`(input_ids_BT, keep_mask_BT)` batches of held-back text, packed as in training."""
    meta = sae.cfg.metadata
    spec = dataset or meta.dataset_path
    docs = iter_documents(spec, holdout_every=HOLDOUT_EVERY, holdout=True)
    windows = TokenWindows(
        docs,
        lm.tokenizer,
        meta.context_size,
        prepend_bos=meta.prepend_bos,
        exclude_special_tokens=True,
    )
    return iter_token_batches(windows, rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sae", help="SAE folder (default: train a small one first)")
    p.add_argument("--model", default="smollm2-135m", help="model to train on without --sae")
    p.add_argument("--train-tokens", type=int, default=40_960)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--dataset", help="text to evaluate on (default: the SAE's training data)")
    p.add_argument("--eval-tokens", type=int, default=8_192)
    p.add_argument("--dashboard-tokens", type=int, default=20_000)
    p.add_argument("--features", type=int, default=20, help="features on the dashboard")
    p.add_argument("--out", default="tutorial-evaluate", help="output folder")
    args = p.parse_args(argv)

    # 1. The SAE and the model it was trained on (its cfg.json names model, hook and data).
    sae = get_sae(args)
    meta = sae.cfg.metadata
    lm = load_model(meta.model_name)
    print(
        f"SAE: {sae.cfg.architecture}, d_in={sae.cfg.d_in}, d_sae={sae.cfg.d_sae}, "
        f"hook {meta.hook_name} of {meta.model_name}"
    )

    # 2. Every metric in one pass over held-back tokens: the SAE is spliced into the model to
    #    measure how much of the next-token loss survives its reconstruction.
    m = evaluate_sae(sae, lm, held_back_batches(sae, lm, args.dataset), max_tokens=args.eval_tokens)
    print(f"L0 (active features per token): {m['l0']:.1f}")
    print(f"explained variance:             {m['explained_variance']:.3f}")
    print(
        f"CE loss clean / spliced / zero-ablated: {m['ce_loss_clean']:.3f} / "
        f"{m['ce_loss_spliced']:.3f} / {m['ce_loss_zero_ablation']:.3f}"
    )
    print(f"CE loss recovered:              {m['ce_loss_recovered']:.3f}")
    print(f"dead features (never fired):    {m['dead_fraction']:.1%}")

    # 3. A dashboard of the features that fired most often during evaluation; all of them come
    #    from one pass over the tokens.
    density = m["log10_feature_density"]
    features = density.argsort(descending=True)[: args.features].tolist()
    index = build_dashboard(
        sae, lm, held_back_batches(sae, lm, args.dataset), features, Path(args.out) / "dashboard",
        max_tokens=args.dashboard_tokens, title="tutorial: evaluate an SAE",
    )  # fmt: skip
    print(f"dashboard: {index}")
    print(f"screenshots: scripts/screenshot_dashboard.sh {index.parent}")


if __name__ == "__main__":
    main()
