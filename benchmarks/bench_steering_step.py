"""CPU time of one cached decoding step, plain vs steered, and of the steering edit alone.

    python benchmarks/bench_steering_step.py runs/saekit/blocks.15.hook_resid_pre

Process CPU time with one torch thread, so other load on a shared machine disturbs it less
than wall time. A decoding step is one token through the model with a KV cache (HF
`DynamicCache`), as `lm.generate` runs it; the edit is `BoundIntervention.edit` on one
position (`add`: one vector add; `clamp`: an SAE encode of that position plus the edit).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from saekit import load_model, load_sae
from saekit.models.generate import encode_prompts
from saekit.steering import Intervention, sae_source, steer


def edit_cost_us(bound, d: int, n: int = 2000) -> float:
    x_11D = torch.randn(1, 1, d)
    for _ in range(50):
        bound.edit(x_11D, None, None)
    start = time.process_time()
    for _ in range(n):
        bound.edit(x_11D, None, None)
    return (time.process_time() - start) / n * 1e6


@torch.no_grad()
def step_cost_ms(lm, ids_1P, steps: int) -> float:
    """Median CPU time of one cached decoding step after the prompt."""
    from transformers import DynamicCache

    cache = DynamicCache()
    lm.model(input_ids=ids_1P, cache=cache, use_cache=True)
    token_11 = ids_1P[:, -1:]
    times = []
    for _ in range(steps):
        start = time.process_time()
        lm.model(input_ids=token_11, cache=cache, use_cache=True)
        times.append(time.process_time() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sae")
    parser.add_argument("--feature", type=int, default=0)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sae = load_sae(args.sae)
    lm = load_model(sae_source(sae).model_name)
    if lm.backend != "hf":
        raise SystemExit("this benchmark times HF models")
    ids_1P, _ = encode_prompts(lm, ["The weather today is"])
    for mode in ("add", "clamp"):
        bound = Intervention(sae, {args.feature: 8.0}, mode=mode).bind(lm)
        print(f"{mode} edit: {edit_cost_us(bound, sae.cfg.d_in):.1f} us per position")
    rows = [("plain", None), ("add", "add"), ("clamp", "clamp"), ("plain again", None)]
    for name, mode in rows:
        if mode is None:
            ms = step_cost_ms(lm, ids_1P, args.steps)
        else:
            with steer(lm, sae, {args.feature: 8.0}, mode=mode):
                ms = step_cost_ms(lm, ids_1P, args.steps)
        print(f"decoding step, {name}: {ms:.1f} ms CPU")


if __name__ == "__main__":
    main()
