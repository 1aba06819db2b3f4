"""Micro-benchmark: one SAE training step and the model forward to the hook, against this
machine's measured dense matmul rate.

For each case it prints the time of one 4096-token step (SAE forward + backward + Adam, the
way the trainer does it), its useful FLOPs (the dense encoder matmul plus the sparse work),
the fraction of the measured matmul peak that reaches, and the floor of the case: model
forward + SAE step, the least a trainer can spend per batch without doing less work.

    python benchmarks/microbench.py                    # all cases, sparse vs dense, fp32
    python benchmarks/microbench.py --case default --autocast --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from saekit.saes import SAE
from saekit.training.trainer import wants_approx_selection

CASES = {  # name -> list of (architecture, d_sae, settings); one step trains them all
    "default": [("topk", 4608, {"k": 32})],
    "wide": [("topk", 18432, {"k": 32})],
    "sweep": [("topk", 4608, {"k": k}) for k in (16, 32, 64, 128)],
    "relu": [("relu", 4608, {})],
}
RELU_L0 = 48  # a ReLU SAE is timed at a trained SAE's sparsity: about 48 active features
D_MODEL, HOOK_LAYER, TOKENS, CONTEXT = 576, 7, 4096, 128


DEVICE = torch.device("cpu")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of `repeat` calls after one warm-up call."""
    fn()
    _sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, repeat: int) -> float:
    """GFLOP/s of the encoder-shaped dense matmul [4096, 576] @ [576, 4608]."""
    a = torch.randn(TOKENS, D_MODEL, device=DEVICE).to(dtype)
    b = torch.randn(D_MODEL, 4608, device=DEVICE).to(dtype)
    return 2 * TOKENS * D_MODEL * 4608 / timed(lambda: a @ b, repeat) / 1e9


def useful_flops(arch: str, d_sae: int, settings: dict, sparse: bool) -> float:
    """FLOPs a step needs: dense encoder forward, plus the rest dense or at the k pairs."""
    enc = 2 * TOKENS * D_MODEL * d_sae
    if not sparse:
        return 3 * enc + 2 * enc + (enc if arch == "relu" else 0)  # fwd, dW_enc, dec fwd/bwd x2
    pairs = 2 * TOKENS * settings.get("k", RELU_L0) * D_MODEL
    return enc + 5 * pairs  # decode, its two grads, W_enc grad, encoder-input grad


def sae_step(arch: str, d_sae: int, settings: dict, sparse: bool, autocast: bool):
    """A closure doing one training step of a fresh SAE on random activations."""
    torch.manual_seed(0)
    sae = SAE.create(arch, d_in=D_MODEL, d_sae=d_sae, device=str(DEVICE), **settings).train()
    sae.sparse = sparse
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3, fused=True)
    x = torch.randn(TOKENS, D_MODEL, device=DEVICE) * 2
    if arch == "relu":  # shift b_enc so that about RELU_L0 pre-activations per token are positive
        with torch.no_grad():
            pre = sae.sae_in(x[:256]) @ sae.W_enc
            sae.b_enc.fill_(-pre.flatten().quantile(1 - RELU_L0 / d_sae).item())
    dead = torch.zeros(d_sae, dtype=torch.bool, device=DEVICE)
    approx = wants_approx_selection("auto", sae, DEVICE)  # the trainer's default

    def step() -> None:
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=autocast):
            out = sae(x, dead_mask=dead, sparse_feature_acts=True, approx_selection=approx)
        out.loss.backward()
        sae.before_optimizer_step()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.after_optimizer_step()
        if getattr(out, "fired_F", None) is None:  # the trainer's firing statistics
            (out.feature_acts != 0).sum(0, dtype=torch.int32)

    return step


def model_forward(dtype: torch.dtype, repeat: int) -> float | None:
    """Seconds of the default model's forward through layers 0-6 for 4096 tokens."""
    from saekit.models import load_model

    try:
        lm = load_model("smollm2-135m", device=DEVICE, dtype=dtype)
    except Exception as err:  # the model is optional for the SAE numbers
        print(f"model forward skipped: {err}")
        return None
    ids = torch.randint(100, 40000, (TOKENS // CONTEXT, CONTEXT), device=DEVICE)
    hook = f"blocks.{HOOK_LAYER}.hook_resid_pre"
    return timed(lambda: lm.run_to_hooks(ids, [hook]), repeat)


def model_flops() -> float:
    """FLOPs of layers 0-6 of SmolLM2-135M for 4096 tokens (matmuls incl. attention)."""
    d, ff, kv, layers = D_MODEL, 1536, 192, HOOK_LAYER
    per_token = 2 * (d * d + 2 * d * kv + d * d + 3 * d * ff) + 2 * 2 * CONTEXT / 2 * d
    return layers * per_token * TOKENS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--case", choices=[*CASES, "all"], default="all")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--autocast", action="store_true", help="also time bf16 autocast")
    p.add_argument("--no-model", action="store_true", help="skip the model forward")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    peak32 = matmul_peak(torch.float32, args.repeat)
    peak16 = matmul_peak(torch.bfloat16, args.repeat)
    res: dict = {"device": str(DEVICE), "threads": torch.get_num_threads(), "peak_gflops_fp32": peak32,
                 "peak_gflops_bf16": peak16, "cases": {}}  # fmt: skip
    print(f"threads {res['threads']}  matmul peak fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f}")
    fwd = {}
    if not args.no_model:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            sec = model_forward(dtype, max(2, args.repeat // 2))
            if sec is not None:
                peak = peak32 if name == "fp32" else peak16
                fwd[name] = sec
                print(f"model forward to {HOOK_LAYER} ({name}): {sec:.3f} s / 4096 tok, "
                      f"{model_flops() / sec / 1e9:.0f} GFLOP/s = "
                      f"{model_flops() / sec / 1e9 / peak:.0%} of peak")  # fmt: skip
    res["model_forward_s"] = fwd
    cases = CASES if args.case == "all" else {args.case: CASES[args.case]}
    variants = [("dense", False, False), ("sparse", True, False)]
    if args.autocast:
        variants += [("dense+bf16", False, True), ("sparse+bf16", True, True)]
    print(f"{'case':8} {'variant':12} {'step s':>8} {'GFLOP/s':>8} {'%peak':>6} {'floor s':>8}")
    for case, saes in cases.items():
        for label, sparse, autocast in variants:
            steps = [sae_step(a, d, s, sparse, autocast) for a, d, s in saes]
            sec = timed(lambda steps=steps: [s() for s in steps], args.repeat)
            flops = sum(useful_flops(a, d, s, sparse) for a, d, s in saes)
            peak = peak16 if autocast else peak32
            floor = sec + fwd.get("fp32", 0.0)
            res["cases"][f"{case}/{label}"] = {"step_s": sec, "gflops": flops / sec / 1e9,
                                              "floor_s": floor}  # fmt: skip
            print(f"{case:8} {label:12} {sec:8.3f} {flops / sec / 1e9:8.0f} "
                  f"{flops / sec / 1e9 / peak:6.0%} {floor:8.3f}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
