"""`saekit eval` on dictionaries that replace or read several hooks at once.

- a CLT folder (`cfg.json` with `architecture: "clt"`), a run folder of per-layer
  transcoders (`--transcoders`: one SAE folder per MLP input hook), or circuit-tracer's
  per-layer files (`layer_{L}.safetensors`): the replacement model (every MLP replaced by the
  dictionary's output), CE loss recovered against zero-ablating those MLPs, KL, per-layer FVU
  and L0 (`saekit.evals.replacement`);
- a crosscoder folder (`architecture: "crosscoder"`): per-source FVU and L0; for a
  model-diffing crosscoder also the shared / one-model feature counts and the histogram of
  relative decoder norms (`saekit.evals.crosscoder`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from saekit.data.provenance import Provenance, settings_for_sae, token_batches, token_windows
from saekit.fileio import atomic_write_text

KINDS = ("clt", "transcoders", "circuit-tracer", "crosscoder")
RESULT_FILE = "eval.json"
NORMS_PLOT = "relative_norms.png"
_MLP_IN = re.compile(r"blocks\.(\d+)\.")


def dictionary_kind(folder: Path) -> str | None:
    """Which multi-hook dictionary `folder` holds (None: a single SAE or nothing known)."""
    cfg_file = folder / "cfg.json"
    if cfg_file.is_file():
        arch = json.loads(cfg_file.read_text()).get("architecture")
        return arch if arch in ("clt", "crosscoder") else None
    if any(folder.glob("layer_*.safetensors")):
        return "circuit-tracer"
    inner = sorted(folder.glob("*/cfg.json"))
    for cfg in inner:  # a run folder holding a CLT or crosscoder: name the folder to pass
        arch = json.loads(cfg.read_text()).get("architecture")
        if arch in ("clt", "crosscoder"):
            raise ValueError(
                f"{folder} is a run folder; evaluate its {arch} with: saekit eval {cfg.parent}"
            )
    return "transcoders" if inner else None


def load_transcoder_set(folder: Path, kind: str, device) -> list:
    """Per-layer transcoders, sorted by layer: one per layer, each with an output hook."""
    from saekit.saes import SAE

    if kind == "circuit-tracer":
        from saekit.io.circuit_tracer import import_transcoder_set

        saes = import_transcoder_set(folder)
    else:
        saes = [SAE.load(f) for f in sorted(folder.glob("*/cfg.json")) for f in [f.parent]]
    plain = [s.cfg.metadata.hook_name for s in saes if not s.cfg.metadata.hook_name_out]
    if plain:
        raise ValueError(
            f"{folder}: {plain} are not transcoders (no hook_name_out); `saekit eval` takes a "
            "run folder of per-layer transcoders (--transcoders), or one SAE folder"
        )
    layers = [int(_MLP_IN.match(s.cfg.metadata.hook_name or "").group(1)) for s in saes]  # type: ignore[union-attr]
    if len(set(layers)) != len(layers):
        raise ValueError(
            f"{folder} holds several transcoders for one layer (a sweep): evaluate a folder "
            "with one transcoder per layer"
        )
    return [
        s.to(device).eval() for _, s in sorted(zip(layers, saes, strict=True), key=lambda p: p[0])
    ]


def run_dictionary_eval(args: argparse.Namespace, folder: Path, kind: str) -> int:
    """Load the dictionary and its model(s), evaluate, print and write the report."""
    from saekit.evals.cli import _json_safe, _load_model
    from saekit.models.loading import resolve_device

    device = resolve_device(getattr(args, "device", "auto"))
    if kind == "crosscoder":
        from saekit.saes.crosscoder import Crosscoder

        model = Crosscoder.load(folder, device=str(device))
        first = model
    elif kind == "clt":
        from saekit.saes.clt import load_clt

        model = first = load_clt(folder, device=str(device))
    else:
        model = load_transcoder_set(folder, kind, device)
        first = model[0]
    data, sources = settings_for_sae(first, args)
    if sources["model"] == "default":
        raise ValueError(f"{folder} names no model (metadata.model_name): pass --model")
    lm = _load_model(data, device)
    part = "heldout" if data.holdout_every else "all"
    if kind == "crosscoder":
        report = _crosscoder_report(model, lm, data, part, args, device)
    else:
        report = _replacement_report(model, kind, lm, data, part, args.tokens)
    report |= {
        "dictionary": str(folder), "kind": kind, "model": data.model, "dataset": data.dataset,
        "holdout_every": data.holdout_every, "context_size": data.context,
        "exclude_special_tokens": data.exclude_special_tokens,
        "provenance": Provenance.of(data).to_dict(),
    }  # fmt: skip
    out_dir = Path(args.out) if args.out else (None if args.json else folder)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if "relative_norm" in report:
            from saekit.evals.crosscoder import plot_relative_norms

            plot_relative_norms(report, out_dir / NORMS_PLOT)
    report.pop("relative_norm", None)
    if out_dir is not None:
        text = json.dumps(_json_safe(report), indent=2) + "\n"
        atomic_write_text(out_dir / RESULT_FILE, text)
    if args.json:
        print(json.dumps(_json_safe(report)))
    else:
        print(format_dictionary_report(report))
        if out_dir is not None:
            print(f"\nwrote {out_dir / RESULT_FILE}", file=sys.stderr)
    return 0


def _replacement_report(model, kind: str, lm, data, part: str, max_tokens: int) -> dict[str, Any]:
    from saekit.evals.replacement import Replacement, evaluate_replacement

    if kind == "clt":
        extra = model.cfg.metadata.extra
        hooks_in, hooks_out = list(extra["hook_names"]), list(extra["hook_names_out"])
        rep = Replacement.of_clt(model, hooks_in, hooks_out)
    else:
        hooks_in = [s.cfg.metadata.hook_name for s in model]
        hooks_out = [s.cfg.metadata.hook_name_out for s in model]
        rep = Replacement.of_transcoders(model, hooks_in, hooks_out)
    batches = token_batches(data, lm.tokenizer, data.forward_rows, part)
    result = evaluate_replacement(rep, lm, batches, max_tokens)
    result["explained_variance"] = 1 - sum(result["fvu_per_layer"]) / len(hooks_in)
    result["l0"] = sum(result["l0_per_layer"])
    return result | {"hook_names": hooks_in, "hook_names_out": hooks_out}


def _crosscoder_report(cc, lm, data, part: str, args, device) -> dict[str, Any]:
    from saekit.data.activations import ActivationSource
    from saekit.evals.crosscoder import diff_summary, evaluate_crosscoder
    from saekit.training.crosscoder import DIFF_PREFIX, PairedActivationSource

    extra = cc.cfg.metadata.extra
    sources = list(extra["hook_names"])
    windows = token_windows(data, lm.tokenizer, part)
    models = extra.get("models")
    if models:
        from saekit.dtypes import DTYPES
        from saekit.models import load_model

        lm_b = load_model(models[1], device=device, dtype=DTYPES[data.dtype])
        hook = sources[0]
        if sources != [hook, DIFF_PREFIX + hook]:
            raise ValueError(f"a diffing crosscoder reads one hook of both models, not {sources}")
        chunks = PairedActivationSource(lm, lm_b, [hook], windows, data.forward_rows)
    else:
        chunks = ActivationSource(lm, sources, windows, data.forward_rows)
    result = evaluate_crosscoder(cc, chunks, sources, args.tokens)
    fired = result.pop("fired")
    result["hook_names"] = sources
    if models:
        result["models"] = list(models)
        result |= diff_summary(cc, fired)
    return result


def format_dictionary_report(report: dict[str, Any]) -> str:
    """A readable summary of a dictionary evaluation."""
    lines = [f"{report['kind']}  {report['dictionary']}", f"model    {report['model']}",
             f"dataset  {report['dataset']}", f"tokens   {report['tokens']}", ""]  # fmt: skip
    for key in ("ce_loss_clean", "ce_loss_replaced", "ce_loss_ablated", "ce_loss_recovered",
                "kl_div", "explained_variance", "l0", "dead_fraction"):  # fmt: skip
        if key in report:
            lines.append(f"{key:<28} {report[key]:>12.4g}")
    per = [("fvu_per_layer", "l0_per_layer"), ("fvu_per_source", None)]
    for fvu_key, l0_key in per:
        if fvu_key in report:
            names = report["hook_names"]
            lines.append("")
            for i, value in enumerate(report[fvu_key]):
                l0 = f"  L0 {report[l0_key][i]:.1f}" if l0_key else ""
                lines.append(f"  {names[i]:<40} FVU {value:.4f}{l0}")
    if "shared" in report:
        lines += ["", "features (relative decoder norm r = |d_other| / (|d_base| + |d_other|)):",
                  f"  shared (0.3-0.7) {report['shared']}, base only (<0.1) {report['a_only']}, "
                  f"other only (>0.9) {report['b_only']}, between {report['between']}, "
                  f"dead {report['dead']}",
                  f"  most specific to the other model: {report['b_only_features'][:10]}"]  # fmt: skip
    return "\n".join(lines)
