"""Cross-check saekit's attribution graphs against circuit-tracer 0.5 (the reference).

The same transcoders, exported to circuit-tracer's layout (`saekit.io.circuit_tracer`), give
a graph in each implementation for the same tokens; the adjacency matrices must agree to float
tolerance. circuit-tracer needs transformers <= 4.57 and huggingface-hub < 1, so it runs in
its own virtual environment and this script has three steps:

    # 1. saekit's venv: transcoders (random JumpReLU, or --transcoders FOLDER...), their
    #    circuit-tracer export, the prompts' tokens and saekit's graphs
    flock /tmp/bench.lock env PYTHONPATH=src python benchmarks/crosscheck_circuit_tracer.py \\
        saekit --out /tmp/ctx
    # 2. circuit-tracer's venv (python3 -m venv /work/ct-venv; pip install torch==2.13.0
    #    'circuit-tracer==0.5.*' 'nnsight==0.6.*' 'transformers<=4.57' 'huggingface-hub<1' gguf):
    #    the model de-quantised from the same GGUF into a local HF folder, then its graphs
    flock /tmp/bench.lock /work/ct-venv/bin/python benchmarks/crosscheck_circuit_tracer.py \\
        reference --out /tmp/ctx
    # 3. either venv: node mapping, adjacency differences, time and peak memory per prompt
    python benchmarks/crosscheck_circuit_tracer.py compare --out /tmp/ctx

Conventions (mapped explicitly in `compare`): circuit-tracer holds position 0 (the BOS token)
at its clean MLP outputs, with no feature nodes and zero error nodes; saekit does the same with
`frozen_positions=[0]` (`saekit attribute` freezes special-token positions). Both order nodes
[features sorted by (layer, position, feature), errors layer-major, tokens, logits], rows are
targets and columns sources. Step 1 writes only tensors and JSON; step 2 imports no saekit.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PROMPTS = {
    "fact": "The Eiffel Tower is located in the city of",
    "code": "def total(values):\n    return sum(values[i] for i in range(len(",
}
WARMUP = "Hello world"


class PeakRSS:
    """Peak resident memory while the block runs (sampled every 2 ms) and before it, MiB."""

    def __init__(self) -> None:
        self.before = self.peak = 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> PeakRSS:
        self.before = self.peak = self.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def _measured(fn):
    with PeakRSS() as mem:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return result, {"seconds": round(seconds, 2), "rss_before_mib": round(mem.before),
                    "peak_rss_mib": round(mem.peak), "peak_increase_mib": round(mem.peak - mem.before)}


# --- step 1: saekit ------------------------------------------------------------------------


def random_jumprelu(lm, d_sae: int, per_token: int, seed: int = 0) -> list:
    """Random JumpReLU transcoders (normed MLP input -> MLP output) whose thresholds let about
    `per_token` features per position fire on a calibration text."""
    from saekit.circuits.frozen import FrozenModel
    from saekit.saes.base import SAE

    torch.manual_seed(seed)
    fz = FrozenModel(lm)
    ids = torch.tensor(lm.tokenizer("Calibration text: the transcoders are random, their thresholds "
                                    "are set from this sentence.")["input_ids"])  # fmt: skip
    run = fz.clean_forward(ids)
    saes = []
    for layer in range(lm.n_layers):
        sae = SAE.create("jumprelu", d_in=lm.d_model, d_sae=d_sae, d_out=lm.d_model,
                         apply_b_dec_to_input=False, metadata={"model_name": lm.spec,
                         "hook_name": f"blocks.{layer}.ln2.hook_normalized",
                         "hook_name_out": f"blocks.{layer}.hook_mlp_out"})  # fmt: skip
        with torch.no_grad():
            sae.W_enc.normal_(0, lm.d_model**-0.5)
            sae.W_dec.normal_(0, 0.02)
            sae.b_dec.normal_(0, 0.01)
            sae.b_enc.zero_()
            pre = fz.mlp_norm(run, layer, run.resid_mid_LTD[layer]) @ sae.W_enc
            level = pre.flatten().quantile(1 - per_token / d_sae)
            sae.threshold.copy_(level.clamp(min=1e-3) * torch.empty(d_sae).uniform_(0.9, 1.1))
        saes.append(sae)
    return saes


def run_saekit(args: argparse.Namespace) -> None:
    from saekit import load_sae
    from saekit.circuits import PerLayerTranscoders, ReplacementModel, attribute
    from saekit.circuits.run import tokenize
    from saekit.io.circuit_tracer import export_transcoder_set
    from saekit.models import load_model
    from saekit.models.loading import smollm2_gguf

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model("smollm2-135m")
    if args.transcoders:
        saes = [load_sae(f) for f in args.transcoders]
        source = f"{len(saes)} folders from {Path(args.transcoders[0]).parent}"
    else:
        saes = random_jumprelu(lm, args.d_sae, args.per_token)
        source = f"random jumprelu, d_sae {args.d_sae}, about {args.per_token} active per token"
    export_transcoder_set(saes, out / "ct_transcoders")
    model = ReplacementModel(lm, PerLayerTranscoders(saes, lm.n_layers))
    gguf = smollm2_gguf()
    manifest = {"gguf": str(gguf), "transcoders": source, "batch_size": args.batch_size,
                "arch": saes[0].cfg.architecture, "k": getattr(saes[0].cfg, "k", None),
                "threads": torch.get_num_threads(), "n_layers": lm.n_layers, "prompts": {}}  # fmt: skip
    attribute(model, tokenize(model, WARMUP), frozen_positions=[0], batch_size=args.batch_size)
    for name in args.prompts.split(","):
        text = PROMPTS[name]
        ids = tokenize(model, text)  # BOS first, as circuit-tracer's ensure_tokenized
        graph, cost = _measured(lambda ids=ids: attribute(model, ids, frozen_positions=[0],
                                                          batch_size=args.batch_size))  # fmt: skip
        save_file({"input_ids": ids, "adjacency": graph.adjacency.contiguous(),
                   "features": graph.features_N3.contiguous(), "acts": graph.acts_N.contiguous(),
                   "logit_ids": graph.logit_ids_K, "logit_probs": graph.logit_probs_K.float(),
                   "logits": model.prepare(ids).run.logits_TV[-1].contiguous()},
                  str(out / f"saekit_{name}.safetensors"))  # fmt: skip
        manifest["prompts"][name] = {"text": text, "tokens": len(ids), "features": graph.n_features, **cost}
        print(name, json.dumps(manifest["prompts"][name]), flush=True)
    (out / "saekit.json").write_text(json.dumps(manifest, indent=1))


# --- step 2: circuit-tracer ----------------------------------------------------------------


def hf_folder(gguf: str, folder: Path) -> Path:
    """The GGUF de-quantised into a float32 HF folder (with this venv's transformers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (folder / "config.json").exists():
        return folder
    path = Path(gguf)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model.hf_quantizer = None  # the weights are plain floats now; the marker blocks saving
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def load_ct_transcoders(folder: Path, manifest: dict):
    """circuit-tracer's TranscoderSet from saekit's export. Its loader knows ReLU and
    JumpReLU only (a `k` tensor is an unexpected key), so TopK sets are built by hand, with
    its `TopK` followed by a ReLU (saekit's TopK zeroes negative values among the top k)."""
    import yaml
    from circuit_tracer.transcoder.activation_functions import TopK
    from circuit_tracer.transcoder.single_layer_transcoder import (
        SingleLayerTranscoder,
        TranscoderSet,
        load_transcoder_set,
    )

    config = yaml.safe_load((folder / "config.yaml").read_text())
    paths = {i: str(folder / name) for i, name in enumerate(config["transcoders"])}
    hooks = {"feature_input_hook": config["feature_input_hook"],
             "feature_output_hook": config["feature_output_hook"]}  # fmt: skip
    if config["activation"] != "topk":
        return load_transcoder_set(paths, scan="saekit-crosscheck", device=torch.device("cpu"),
                                   lazy_encoder=False, lazy_decoder=False, **hooks)  # fmt: skip
    layers = {}
    for i, path in paths.items():
        t = load_file(path)
        # saekit's TopK zeroes negative values among the top k; circuit-tracer's keeps them
        activation = torch.nn.Sequential(TopK(int(t["k"])), torch.nn.ReLU())
        tc = SingleLayerTranscoder(t["W_enc"].shape[1], t["W_enc"].shape[0], activation, i,
                                   device=torch.device("cpu"), dtype=torch.float32)  # fmt: skip
        tc.load_state_dict({k: v for k, v in t.items() if k != "k"})
        layers[i] = tc
    return TranscoderSet(layers, scan="saekit-crosscheck", **hooks)


def run_reference(args: argparse.Namespace) -> None:
    import circuit_tracer
    from circuit_tracer import ReplacementModel, attribute

    out = Path(args.out)
    manifest = json.loads((out / "saekit.json").read_text())
    folder = hf_folder(manifest["gguf"], out / "hf-smollm2-135m")
    transcoders = load_ct_transcoders(out / "ct_transcoders", manifest)
    model = ReplacementModel.from_pretrained_and_transcoders(
        str(folder), transcoders, backend="nnsight", device=torch.device("cpu"), dtype=torch.float32
    )
    batch = manifest["batch_size"]
    tok = model.tokenizer
    warm = torch.tensor([tok.bos_token_id, *tok(WARMUP, add_special_tokens=False).input_ids])
    attribute(warm, model, batch_size=batch)
    report = {"version": getattr(circuit_tracer, "__version__", "0.5"), "prompts": {}}
    for name in manifest["prompts"]:
        ids = load_file(str(out / f"saekit_{name}.safetensors"))["input_ids"]
        graph, cost = _measured(lambda ids=ids: attribute(ids, model, batch_size=batch))
        feats = graph.active_features[graph.selected_features]
        acts = graph.activation_values[graph.selected_features]
        targets = [t.vocab_idx for t in graph.logit_targets]
        save_file({"adjacency": graph.adjacency_matrix.float().contiguous(),
                   "features": feats.long().contiguous(), "acts": acts.float().contiguous(),
                   "logit_ids": torch.tensor(targets), "logit_probs": graph.logit_probabilities.float()},
                  str(out / f"reference_{name}.safetensors"))  # fmt: skip
        report["prompts"][name] = {"features": len(feats), **cost}
        print(name, json.dumps(report["prompts"][name]), flush=True)
    (out / "reference.json").write_text(json.dumps(report, indent=1))


# --- step 3: compare -----------------------------------------------------------------------


def compare_one(ours: dict, ref: dict, n_layers: int) -> dict:
    """Map the nodes of both graphs and measure how far the adjacencies are apart."""
    T = len(ours["input_ids"])
    same_nodes = torch.equal(ours["features"], ref["features"]) and torch.equal(
        ours["logit_ids"], ref["logit_ids"]
    )
    if not same_nodes:
        return {"same_nodes": False, "features": [len(ours["features"]), len(ref["features"])]}
    A, B = ours["adjacency"].double(), ref["adjacency"].double()
    N = len(ours["features"])
    blocks = {"feature rows": slice(0, N), "logit rows": slice(N + (n_layers + 1) * T, None)}
    scale = B.abs().max()
    report = {"same_nodes": True, "nodes": A.shape[0], "max_abs_edge": float(scale),
              "max_abs_diff": float((A - B).abs().max()),
              "max_diff_over_max_edge": float((A - B).abs().max() / scale),
              "acts_max_diff": float((ours["acts"] - ref["acts"]).abs().max()),
              "logit_probs_max_diff": float((ours["logit_probs"] - ref["logit_probs"]).abs().max())}  # fmt: skip
    for label, rows in blocks.items():
        diff, base = (A[rows] - B[rows]).abs(), B[rows].abs().amax(1, keepdim=True).clamp(min=1e-30)
        report[f"{label}: worst row diff / row max"] = float((diff / base).max())
    report["allclose(rtol=1e-4, atol=1e-5 * max edge)"] = bool(
        torch.allclose(A, B, rtol=1e-4, atol=1e-5 * float(scale))
    )
    return report


def run_compare(args: argparse.Namespace) -> None:
    out = Path(args.out)
    ours_meta = json.loads((out / "saekit.json").read_text())
    ref_meta = json.loads((out / "reference.json").read_text())
    lines = []
    for name in ours_meta["prompts"]:
        ours = load_file(str(out / f"saekit_{name}.safetensors"))
        ref = load_file(str(out / f"reference_{name}.safetensors"))
        result = compare_one(ours, ref, ours_meta["n_layers"])
        costs = {"saekit": ours_meta["prompts"][name], "circuit-tracer": ref_meta["prompts"][name]}
        lines.append({"prompt": name, **result, **costs})
        print(json.dumps(lines[-1], indent=1))
    (out / "compare.json").write_text(json.dumps(lines, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("saekit", "reference", "compare"))
    parser.add_argument("--out", default="/tmp/ctx", help="shared folder of the three steps")
    parser.add_argument("--transcoders", nargs="*", default=(), help="transcoder folders (default: random)")
    parser.add_argument("--d-sae", type=int, default=1024, help="random transcoders' width")
    parser.add_argument("--per-token", type=int, default=8, help="random transcoders' active features per token")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per backward pass, both sides")
    parser.add_argument("--prompts", default=",".join(PROMPTS), help="which of " + ",".join(PROMPTS))
    args = parser.parse_args()
    {"saekit": run_saekit, "reference": run_reference, "compare": run_compare}[args.step](args)


if __name__ == "__main__":
    main()
