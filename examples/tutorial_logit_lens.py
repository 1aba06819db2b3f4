"""Tutorial: logit lens on SAE features -- what does each feature's decoder direction predict?

A feature writes `W_dec[f]` into the residual stream. Read through the unembedding,
`W_dec[f] @ W_U` scores every vocabulary token: the tokens this feature makes the model more
(or less) likely to predict next, through the direct path (the final norm is left out).

    python examples/tutorial_logit_lens.py --sae runs/saekit/<sae-name>

Without --sae it first trains a small TopK SAE on the embedded default model, offline
(see tutorial_evaluate_sae.py for the same step).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit import load_model, load_sae
from saekit.analysis import (
    feature_logit_effects,
    logit_effects,
    token_set_enrichment,
    top_features_per_set,
)


def get_sae(args):
    """Load --sae, or train a small SAE on --model."""
    if args.sae:
        return load_sae(args.sae)
    from saekit.training.config import TrainConfig
    from saekit.training.run import train

    cfg = TrainConfig(
        model=args.model, out=str(Path(args.out) / "train-run"), tokens=args.train_tokens,
        context=args.context, ks=(16,), expansion_factor=4, batch_tokens=1024,
        buffer_tokens=8192, init_tokens=2048, eval_tokens=0, device="cpu", progress=False,
    )  # fmt: skip
    (folder,) = train(cfg).sae_folders.values()
    return load_sae(folder)


def show(tokens: list[tuple[int, str, float]]) -> str:
    return "  ".join(f"{text!r}({value:+.3g})" for _, text, value in tokens)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sae", help="SAE folder (default: train a small one first)")
    p.add_argument("--model", default="smollm2-135m", help="model to train on without --sae")
    p.add_argument("--train-tokens", type=int, default=40_960)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--k", type=int, default=8, help="tokens per list")
    p.add_argument("--out", default="tutorial-logit-lens", help="folder for the training run")
    args = p.parse_args(argv)

    sae = get_sae(args)
    lm = load_model(sae.cfg.metadata.model_name)

    # 1. One feature: the tokens its decoder direction boosts and suppresses.
    effects = feature_logit_effects(sae, lm, feature=0, k=args.k)
    print(f"feature 0 boosts:     {show(effects.positive)}")
    print(f"feature 0 suppresses: {show(effects.negative)}")

    # 2. The whole dictionary at once: token-set enrichment. For each set of tokens (digits,
    #    capitalised words, words after a space, ...) and each feature, the score is how many
    #    vocabulary standard deviations the feature lifts the set's mean logit above the mean.
    scores_FS, set_names, logit_stats = token_set_enrichment(sae, lm)
    top = top_features_per_set(scores_FS, set_names, n=3)
    for name, features in top.items():
        print(f"{name:32s} " + "  ".join(f"#{f} ({score:+.2f})" for f, score in features))

    # 3. The top feature of each set, read back through the logit lens.
    best = [features[0][0] for features in top.values()]
    for name, eff in zip(top, logit_effects(sae, lm, best, k=args.k), strict=True):
        print(f"top '{name}' feature #{eff.feature}: {show(eff.positive)}")

    # 4. Features whose logit weights are most skewed boost a few tokens strongly: often
    #    the most interpretable "token-predicting" features.
    skewed = logit_stats["skew"].argsort(descending=True)[:3].tolist()
    print(f"most skewed logit distributions: features {skewed}")


if __name__ == "__main__":
    main()
