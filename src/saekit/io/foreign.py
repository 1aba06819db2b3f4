"""EleutherAI sparsify and dictionary_learning folders <-> `SAEParts`.

Both formats always encode `x - b_dec`; an SAE that does not is folded into `b_enc` so the
outputs stay equal. `ae.pt` files load through the restricted unpickler.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saekit.fileio import atomic_write, atomic_write_text
from saekit.io.legacy import safe_torch_load
from saekit.io.parts import SAEParts


def read_sparsify(folder: Path) -> SAEParts:
    """An EleutherAI sparsify folder (one hook): TopK, encoder stored as `[d_sae, d_in]`."""
    scfg = json.loads((folder / "cfg.json").read_text())
    if scfg.get("activation", "topk") != "topk":
        raise ValueError(f"{folder}: sparsify activation {scfg['activation']!r} is not supported (only topk)")
    for flag in ("transcode", "skip_connection"):
        if scfg.get(flag):
            raise ValueError(f"{folder}: sparsify coders with {flag}=True are not supported")
    t = load_file(str(folder / "sae.safetensors"))
    d_sae, d_in = t["encoder.weight"].shape
    tensors = {
        "W_enc": t["encoder.weight"].T.contiguous(),
        "b_enc": t["encoder.bias"],
        "W_dec": t["W_dec"],
        "b_dec": t["b_dec"],
    }
    metadata: dict[str, Any] = {"hook_name": folder.name}
    run_cfg = folder.parent / "config.json"  # sparsify writes the run's config beside the hooks
    if run_cfg.is_file():
        run = json.loads(run_cfg.read_text())
        if isinstance(run.get("model"), str):
            metadata["model_name"] = run["model"]
        if isinstance(run.get("dataset"), str):
            metadata["dataset_path"] = run["dataset"]
    cfg = {
        "architecture": "topk",
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "k": int(scfg["k"]),
        "apply_b_dec_to_input": True,
        "dtype": str(t["encoder.weight"].dtype).removeprefix("torch."),
        "metadata": metadata,
    }
    return SAEParts(cfg, tensors)


def read_dictionary_learning(folder: Path) -> SAEParts:
    """A dictionary_learning folder: `ae.pt` state dict + `config.json` (`trainer` section)."""
    state = safe_torch_load(folder / "ae.pt")
    trainer: dict[str, Any] = {}
    if (folder / "config.json").is_file():
        trainer = json.loads((folder / "config.json").read_text()).get("trainer", {})
    dict_class = trainer.get("dict_class") or ("AutoEncoderTopK" if "k" in state else "AutoEncoder")
    W_enc = state["encoder.weight"].T.contiguous()
    d_in, d_sae = W_enc.shape
    tensors = {"W_enc": W_enc, "b_enc": state["encoder.bias"], "W_dec": state["decoder.weight"].T.contiguous()}
    cfg: dict[str, Any] = {"d_in": int(d_in), "d_sae": int(d_sae), "apply_b_dec_to_input": True}
    if dict_class == "AutoEncoder":
        cfg["architecture"] = "relu"
        tensors["b_dec"] = state["bias"]
    elif dict_class == "AutoEncoderTopK":
        cfg.update(architecture="topk", k=int(state["k"]) if "k" in state else int(trainer["k"]))
        tensors["b_dec"] = state["b_dec"]
    elif dict_class == "BatchTopKSAE":
        # At inference BatchTopK keeps relu(pre) where it exceeds one learned threshold:
        # a JumpReLU whose per-feature thresholds all equal that value.
        threshold = float(state["threshold"])
        if threshold < 0:
            raise ValueError(f"{folder}: BatchTopKSAE threshold was never set (is {threshold})")
        cfg["architecture"] = "jumprelu"
        tensors["b_dec"] = state["b_dec"]
        tensors["threshold"] = torch.full((d_sae,), threshold, dtype=W_enc.dtype)
    else:
        raise ValueError(
            f"{folder}: dictionary_learning class {dict_class!r} is not supported "
            "(AutoEncoder, AutoEncoderTopK, BatchTopKSAE are)"
        )
    cfg["dtype"] = str(W_enc.dtype).removeprefix("torch.")
    metadata = {"model_name": trainer.get("lm_name"), "hook_layer": trainer.get("layer"),
                "hook_name": trainer.get("submodule_name")}
    cfg["metadata"] = {k: v for k, v in metadata.items() if v is not None}
    return SAEParts(cfg, tensors)


def _b_enc_with_b_dec_subtracted(parts: SAEParts) -> torch.Tensor:
    """`b_enc` for a format that always encodes `x - b_dec`: fold b_dec in when the SAE doesn't."""
    t = parts.tensors
    if parts.cfg.get("apply_b_dec_to_input", True):
        return t["b_enc"]
    return t["b_enc"] + t["b_dec"] @ t["W_enc"]


def write_sparsify(parts: SAEParts, dst: Path) -> None:
    """An EleutherAI sparsify folder (TopK SAEs only)."""
    cfg, t = parts.cfg, parts.tensors
    if cfg["architecture"] != "topk":
        raise ValueError(f"sparsify holds TopK coders only, not {cfg['architecture']!r}")
    _check_plain(parts, "sparsify")
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    tensors = {
        "encoder.weight": t["W_enc"].T.contiguous(),
        "encoder.bias": _b_enc_with_b_dec_subtracted(parts).contiguous(),
        "W_dec": t["W_dec"].contiguous(),
        "b_dec": t["b_dec"].contiguous(),
    }
    scfg = {
        "activation": "topk",
        "expansion_factor": max(d_sae // d_in, 1),
        "normalize_decoder": True,
        "num_latents": d_sae,
        "k": int(cfg["k"]),
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": d_in,
    }
    atomic_write(dst / "sae.safetensors", lambda p: save_file(tensors, p))
    _write_json(dst / "cfg.json", json.dumps(scfg, indent=2))


def write_dictionary_learning(parts: SAEParts, dst: Path) -> None:
    """A dictionary_learning folder: `ae.pt` (a state dict of tensors) + `config.json`."""
    cfg, t = parts.cfg, parts.tensors
    _check_plain(parts, "dictionary_learning")
    arch = cfg["architecture"]
    common = {
        "encoder.weight": t["W_enc"].T.contiguous(),
        "encoder.bias": _b_enc_with_b_dec_subtracted(parts).contiguous(),
        "decoder.weight": t["W_dec"].T.contiguous(),
    }
    if arch == "relu":
        state, dict_class = {"bias": t["b_dec"].contiguous(), **common}, "AutoEncoder"
    elif arch == "topk":
        state = {**common, "b_dec": t["b_dec"].contiguous(),
                 "k": torch.tensor(int(cfg["k"]), dtype=torch.int), "threshold": torch.tensor(-1.0)}
        dict_class = "AutoEncoderTopK"
    else:
        raise ValueError(f"dictionary_learning export supports relu and topk, not {arch!r}")
    meta = parts.metadata
    trainer = {
        "dict_class": dict_class,
        "trainer_class": "saekit",
        "activation_dim": cfg["d_in"],
        "dict_size": cfg["d_sae"],
        "lm_name": meta.get("model_name"),
        "layer": meta.get("hook_layer"),
        "submodule_name": meta.get("hook_name"),
    }
    if arch == "topk":
        trainer["k"] = int(cfg["k"])
    atomic_write(dst / "ae.pt", lambda p: torch.save(state, p))
    _write_json(dst / "config.json", json.dumps({"trainer": trainer}, indent=2))


def _check_plain(parts: SAEParts, fmt: str) -> None:
    """Formats without input normalization or a separate output width."""
    cfg = parts.cfg
    if cfg.get("normalize_activations", "none") not in (None, "none"):
        raise ValueError(f"{fmt} has no activation normalization; fold it into the weights first")
    if cfg.get("d_out") not in (None, cfg["d_in"]):
        raise ValueError(f"{fmt} export does not support transcoders (d_out != d_in)")




def _write_json(path: Path, text: str) -> None:
    atomic_write_text(path, text + "\n")
