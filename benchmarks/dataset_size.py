"""How many tokens a dataset holds, as training and evaluation see it (the numbers docs/data.md
quotes for `builtin:python-docs`): documents, characters, and kept tokens (BOS/EOS/pad left
out) of the training part and of the held-back part, packed into `--context` windows.

    python benchmarks/dataset_size.py [--dataset builtin:python-docs] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import platform

from saekit.data.provenance import Provenance, documents, token_windows
from saekit.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="builtin:python-docs")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--holdout-every", type=int, default=20)
    args = parser.parse_args()
    prov = Provenance(model=args.model, dataset=args.dataset, context=args.context,
                      holdout_every=args.holdout_every)  # fmt: skip
    tokenizer = load_model(args.model).tokenizer
    print(f"{args.dataset} on Python {platform.python_version()}, {args.model} tokenizer, "
          f"context {args.context}, every {args.holdout_every}th document held back")  # fmt: skip
    for part in ("train", "heldout"):
        docs = list(documents(prov, part))
        chars = sum(len(d) for d in docs if isinstance(d, str))
        kept = windows = 0
        for _ids, keep in token_windows(prov, tokenizer, part):
            kept += int(keep.sum())
            windows += 1
        print(f"{part:8} {len(docs):6,} documents {chars:12,} characters {windows:7,} windows "
              f"{kept:10,} kept tokens")  # fmt: skip


if __name__ == "__main__":
    main()
