"""Run SAELens on SAE folders for saekit's tests, in the venv where SAELens is installed.

saekit's tests run in `.venv`; SAELens (and the versions of its dependencies it pins) lives
in `.venv-peers` (`scripts/setup_peers.sh`). This script runs there, imports SAELens and no
saekit, says `{"ok": true, "result": "<SAELens version>"}` once SAELens has imported, then
answers jobs, one JSON object a line on stdin, with one JSON line on stdout:
`{"ok": true, "result": ...}` or `{"ok": false, "error": "<traceback>"}`. Tensors travel as
safetensors files, never pickles. Jobs:

- `{"op": "registry"}`: result `{"inference": [...], "training": [...]}`, the architectures
  SAELens registers.
- `{"op": "load", "folder": F, "inputs": I, "out": O}`: `sae_lens.SAE.load_from_disk(F)`.
- `{"op": "create", "architecture": A, "cfg": {...}, "hook_name": H, "seed": S,
  "training": false, "buffers": {...}, "folder": F, "inputs": I, "out": O}`: a SAELens SAE
  of architecture A with `cfg`, its parameters drawn at random (seed S: normal(0, 0.3),
  thresholds uniform(0, 0.3)), saved to F with `save_model`. With `"training": true` it is
  the training class, `buffers` set (e.g. BatchTopK's `topk_threshold`), saved with
  `save_inference_model`; the outputs are then those of the inference SAE SAELens reads back
  from F (a training SAE's `encode` is batch-dependent). Without `inputs`, only the folder.

For both, the inputs file holds `x` [B, d_in] and `f` [B, d_sae]; the outputs file gets
`encode` = encode(x), `decode` = decode(f), `forward` = sae(x) and `weight.NAME` for each
entry of the SAE's `state_dict()`, with metadata `class`, `architecture`, `hook_name` and
`sae_lens_version`. Try it by hand:

    echo '{"op": "load", "folder": "runs/saekit/blocks.15.hook_resid_pre", "inputs":
    "in.safetensors", "out": "out.safetensors"}' | .venv-peers/bin/python tests/saelens_peer.py
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def randomise(module, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "threshold":
                p.uniform_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.3)


def write_outputs(lens, inputs: str, out: str) -> None:
    import sae_lens
    import torch
    from safetensors.torch import load_file, save_file

    t = load_file(inputs)
    lens.eval()
    with torch.no_grad():
        tensors = {
            "encode": lens.encode(t["x"]),
            "decode": lens.decode(t["f"]),
            "forward": lens(t["x"]),
            **{f"weight.{k}": v for k, v in lens.state_dict().items()},
        }
    metadata = {
        "class": type(lens).__name__,
        "architecture": lens.cfg.architecture(),
        "hook_name": str(lens.cfg.metadata.hook_name),
        "sae_lens_version": sae_lens.__version__,
    }
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, out, metadata=metadata)


def create(job: dict) -> None:
    import sae_lens
    import torch
    from sae_lens.registry import get_sae_class, get_sae_training_class

    training = job.get("training", False)
    get = get_sae_training_class if training else get_sae_class
    cls, cfg_cls = get(job["architecture"])
    cfg = cfg_cls(**job["cfg"])
    cfg.metadata.hook_name = job.get("hook_name")
    lens = cls(cfg)
    randomise(lens, job.get("seed", 0))
    for name, value in job.get("buffers", {}).items():
        setattr(lens, name, torch.tensor(value))
    if training:
        lens.save_inference_model(job["folder"])
        lens = sae_lens.SAE.load_from_disk(job["folder"])
    else:
        lens.save_model(job["folder"])
    if "inputs" in job:
        write_outputs(lens, job["inputs"], job["out"])


def run(job: dict):
    import sae_lens
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    if job["op"] == "load":
        write_outputs(sae_lens.SAE.load_from_disk(job["folder"]), job["inputs"], job["out"])
    elif job["op"] == "create":
        create(job)
    elif job["op"] == "registry":
        return {
            "inference": sorted(SAE_CLASS_REGISTRY),
            "training": sorted(SAE_TRAINING_CLASS_REGISTRY),
        }
    else:
        raise ValueError(f"unknown op {job['op']!r}")
    return None


def main() -> None:
    # Answers go to the real stdout; anything a library prints goes to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    import sae_lens  # import once, then say so: the first line is the version

    answers.write(json.dumps({"ok": True, "result": sae_lens.__version__}) + "\n")
    answers.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = {"ok": True, "result": run(json.loads(line))}
        except Exception:
            answer = {"ok": False, "error": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
