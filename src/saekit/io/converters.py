"""Read and write SAEs in other libraries' formats.

Every reader returns `SAEParts`: a SAELens-6-style config dict (`architecture, d_in, d_sae,
apply_b_dec_to_input, dtype, k?, metadata{...}`, saekit architecture names) and the weights
under saekit names (`W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]`,
`b_dec [d_in]`, `threshold [d_sae]` for jumprelu). Every writer takes `SAEParts`.
Conversions are exact: where a format has no switch for something (sparsify and
dictionary_learning always subtract the decoder bias from the input), it is folded into
the weights so that outputs stay equal.

Formats:
- `saekit` / `saelens`: folder with `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`)
- `mats_pt`: the original mats_sae_training `.pt` file (read only, restricted unpickling)
- `sparsify`: EleutherAI sparsify folder per hook: `cfg.json` + `sae.safetensors`
- `dictionary_learning`: folder with `ae.pt` (restricted unpickling) + `config.json`
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from saekit.fileio import atomic_folder, atomic_write, atomic_write_text
from saekit.io.foreign import (
    read_dictionary_learning,
    read_sparsify,
    write_dictionary_learning,
    write_sparsify,
)
from saekit.io.legacy import (
    LegacyFormatError,
    legacy_sae_settings,
    load_legacy_checkpoint,
    safe_torch_load,
)
from saekit.io.parts import SAEParts
from saekit.saes.config import ARCH_SETTINGS, architecture_from_file, saelens_architecture

if TYPE_CHECKING:
    from saekit.saes import SAE

FORMATS = ("saekit", "saelens", "mats_pt", "sparsify", "dictionary_learning")
WRITABLE_FORMATS = ("saekit", "saelens", "sparsify", "dictionary_learning")



# ----------------------------------------------------------------------------- detection


def detect_format(path: str | Path) -> str:
    """Name the format of a local file or folder (see `FORMATS`)."""
    path = Path(path)
    if path.is_file():
        if path.suffix in {".pt", ".pth"}:
            return "mats_pt"
        if path.name == "cfg.json":
            return detect_format(path.parent)
        raise ValueError(f"{path}: unknown SAE file type (expected a folder or a .pt file)")
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if (path / "sae.safetensors").is_file() and (path / "cfg.json").is_file():
        return "sparsify"
    if (path / "ae.pt").is_file():
        return "dictionary_learning"
    if (path / "sae_weights.safetensors").is_file() and (path / "cfg.json").is_file():
        from saekit.saes.folder import read_cfg

        cfg = read_cfg(path)
        meta = cfg.get("metadata")
        marked = isinstance(meta, dict) and meta.get("saekit_version")
        return "saekit" if marked or _is_saekit_cfg(cfg) else "saelens"
    raise ValueError(
        f"{path}: not an SAE folder (expected cfg.json + sae_weights.safetensors, "
        "cfg.json + sae.safetensors (sparsify), or ae.pt (dictionary_learning))"
    )


def _is_saekit_cfg(cfg: dict[str, Any]) -> bool:
    arch = cfg.get("architecture")
    return (isinstance(arch, str) and arch in {"relu", "batchtopk", "matryoshka"}) or "decoder_norm" in cfg


# ----------------------------------------------------------------------------- readers


def read_parts(path: str | Path, fmt: str | None = None) -> SAEParts:
    """Read an SAE from a local file or folder in any known format."""
    fmt = fmt or detect_format(path)
    readers: dict[str, Callable[[Path], SAEParts]] = {
        "saekit": read_saelens,
        "saelens": read_saelens,
        "mats_pt": read_mats_pt,
        "sparsify": read_sparsify,
        "dictionary_learning": read_dictionary_learning,
    }
    if fmt not in readers:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    parts = readers[fmt](Path(path))
    parts.metadata.setdefault("source_format", fmt)
    return parts


def read_mats_pt(path: Path) -> SAEParts:
    """The original `final_sparse_autoencoder_*.pt` (restricted unpickling)."""
    ckpt = load_legacy_checkpoint(path)
    cfg = legacy_sae_settings(ckpt)
    tensors = {k: ckpt.state_dict[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    sparsity_path = path.with_name(path.stem + "_log_feature_sparsity.pt")
    sparsity = load_legacy_sparsity(sparsity_path) if sparsity_path.is_file() else None
    return SAEParts(cfg, tensors, sparsity)


def load_legacy_sparsity(path: str | Path) -> torch.Tensor:
    """A `..._log_feature_sparsity.pt` file: one pickled tensor of log10 densities."""
    obj = safe_torch_load(path)
    if not isinstance(obj, torch.Tensor):
        raise LegacyFormatError(f"{path}: expected one tensor, found {type(obj).__name__}")
    return obj.reshape(-1) if obj.dim() > 1 and obj.shape[0] == 1 else obj


def read_saelens(folder: Path) -> SAEParts:
    """A SAELens (any version) or saekit folder."""
    cfg = json.loads((folder / "cfg.json").read_text())
    tensors = load_file(str(folder / "sae_weights.safetensors"))
    cfg = _normalize_saelens_cfg(cfg)
    sparsity_file = folder / "sparsity.safetensors"
    sparsity = _single_tensor(load_file(str(sparsity_file))) if sparsity_file.is_file() else None
    return SAEParts(cfg, dict(tensors), sparsity)


def _single_tensor(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    for key in ("sparsity", "log_feature_sparsity"):
        if key in tensors:
            return tensors[key]
    if len(tensors) != 1:
        raise ValueError(f"sparsity file holds {sorted(tensors)}; expected one tensor")
    return next(iter(tensors.values()))


# Keys of pre-6 SAELens configs (flat) that belong in `metadata`.
_OLD_SAELENS_METADATA = (
    "model_name", "hook_name", "hook_layer", "hook_head_index", "dataset_path",
    "context_size", "prepend_bos", "model_from_pretrained_kwargs", "dataset_trust_remote_code",
    "sae_lens_training_version", "neuronpedia_id", "model_class_name", "seqpos_slice",
)


def _normalize_saelens_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """Any SAELens cfg.json (flat pre-6 or 6.x) -> saekit config dict."""
    cfg = dict(cfg)
    metadata = dict(cfg.pop("metadata", None) or {})
    if "hook_point" in cfg and "hook_name" not in cfg:  # the oldest reformatted configs
        cfg["hook_name"] = cfg.pop("hook_point")
        if "hook_point_layer" in cfg:
            cfg["hook_layer"] = cfg.pop("hook_point_layer")
    for key in _OLD_SAELENS_METADATA:
        if key in cfg:
            metadata.setdefault(key, cfg.pop(key))
    arch = cfg.pop("saekit_architecture", None) or cfg.get("architecture", "standard")
    if arch == "standard" and cfg.get("activation_fn_str") == "topk":
        arch = "topk"
        cfg["k"] = (cfg.get("activation_fn_kwargs") or {}).get("k", cfg.get("k"))
    cfg["architecture"] = architecture_from_file(arch) or arch
    if cfg.get("finetuning_scaling_factor"):
        raise ValueError("SAEs with finetuning_scaling_factor=True are not supported")
    for key in ("activation_fn_str", "activation_fn_kwargs", "finetuning_scaling_factor"):
        cfg.pop(key, None)
    if isinstance(cfg.get("dtype"), str):
        cfg["dtype"] = cfg["dtype"].removeprefix("torch.")
    cfg.setdefault("apply_b_dec_to_input", True)
    cfg["metadata"] = metadata
    return cfg


# ----------------------------------------------------------------------------- writers


def write_parts(parts: SAEParts, dst: str | Path, fmt: str) -> Path:
    """Write `parts` to the folder `dst` in format `fmt` (see `WRITABLE_FORMATS`)."""
    writers: dict[str, Callable[[SAEParts, Path], None]] = {
        "saelens": write_saelens,
        "sparsify": write_sparsify,
        "dictionary_learning": write_dictionary_learning,
    }
    if fmt not in writers:
        raise ValueError(f"cannot write format {fmt!r} here; writable: {', '.join(writers)}")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    writers[fmt](parts, dst)
    return dst


def write_saelens(parts: SAEParts, dst: Path) -> None:
    """A SAELens 6 folder (architecture names mapped, saekit-only keys dropped)."""
    cfg = parts.cfg
    arch = cfg["architecture"]
    if arch not in ARCH_SETTINGS:
        raise ValueError(f"SAELens has no inference architecture for saekit's {arch!r}")
    if cfg.get("d_out", cfg["d_in"]) != cfg["d_in"] or parts.metadata.get("hook_name_out"):
        raise ValueError(
            "--to saelens does not write transcoders; a saekit transcoder folder opens in "
            "SAELens as it is (relu, jumprelu, batchtopk and matryoshka)"
        )
    saelens_arch = saelens_architecture(arch)
    if saelens_arch == "jumprelu" and "threshold" not in parts.tensors:
        raise ValueError(f"a {arch!r} SAE needs a 'threshold' tensor to be written as jumprelu")
    out: dict[str, Any] = {
        "architecture": saelens_arch,
        "d_in": cfg["d_in"],
        "d_sae": cfg["d_sae"],
        "dtype": cfg.get("dtype", "float32"),
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)),
        "normalize_activations": cfg.get("normalize_activations", "none"),
        "reshape_activations": cfg.get("reshape_activations", "none"),
        "metadata": {k: v for k, v in parts.metadata.items() if k != "saekit_version"},
    }
    if arch == "topk":
        out["k"] = cfg["k"]
        out["rescale_acts_by_decoder_norm"] = bool(cfg.get("rescale_acts_by_decoder_norm", False))
    tensors = {k: v.contiguous() for k, v in parts.tensors.items()}
    atomic_write(dst / "sae_weights.safetensors", lambda p: save_file(tensors, p))
    if parts.sparsity is not None:
        atomic_write(dst / "sparsity.safetensors", lambda p: save_file({"sparsity": parts.sparsity.contiguous()}, p))
    _atomic_write_text(dst / "cfg.json", json.dumps(out, indent=2))


# ----------------------------------------------------------------------------- saekit SAEs


def parts_to_sae(parts: SAEParts, device: str = "cpu") -> SAE:
    """A saekit SAE holding exactly `parts`' weights (in eval mode)."""
    from saekit.saes import SAE
    from saekit.saes.config import SAEConfig

    cfg = {k: v for k, v in parts.cfg.items() if v is not None}
    arch = cfg.pop("architecture")
    known = {f.name for f in dataclasses.fields(SAEConfig)} - {"architecture", "device"}
    metadata = dict(cfg.pop("metadata", {}))
    for key in sorted(set(cfg) - known):  # keys saekit has no field for stay as metadata
        metadata.setdefault(key, cfg.pop(key))
    cfg = {k: v for k, v in cfg.items() if k in known}
    sae = SAE.create(arch, metadata=metadata, **cfg)
    expected = set(sae.state_dict())
    if set(parts.tensors) != expected:
        raise ValueError(
            f"{arch} SAE needs tensors {sorted(expected)}, the source has {sorted(parts.tensors)}"
        )
    dtype = next(iter(sae.state_dict().values())).dtype
    sae.load_state_dict({k: v.to(dtype) for k, v in parts.tensors.items()})
    return sae.to(device).eval()


def sae_to_parts(sae: SAE, sparsity: torch.Tensor | None = None) -> SAEParts:
    """The plain-data form of a saekit SAE (saekit architecture names)."""
    cfg = sae.cfg.to_dict()
    cfg["architecture"] = cfg.pop("saekit_architecture", None) or sae.cfg.architecture
    tensors = {k: v.detach().cpu() for k, v in sae.state_dict().items()}
    return SAEParts(cfg, tensors, sparsity)


def read_sae(
    path: str | Path, fmt: str | None = None, device: str = "cpu", *, check_weights: bool = True
) -> SAE:
    """A saekit SAE from a local file or folder in any known format (NaN/inf weights refused
    unless `check_weights=False`)."""
    fmt = fmt or detect_format(path)
    if fmt == "saekit":
        from saekit.saes import SAE

        return SAE.load(path, device=device, check_weights=check_weights)
    sae = parts_to_sae(read_parts(path, fmt), device=device)
    if check_weights:
        from saekit.saes.folder import check_weights as check

        check(sae, path)
    return sae


def convert(
    src: str | Path,
    dst: str | Path,
    to: str = "saekit",
    src_format: str | None = None,
    *,
    force: bool = False,
) -> Path:
    """Convert the SAE at `src` (any known format) into a new `to`-format folder at `dst`.

    `dst` must not exist unless `force`; the folder appears complete or not at all.
    """
    if to not in WRITABLE_FORMATS:
        raise ValueError(f"cannot convert to {to!r}; targets: {', '.join(WRITABLE_FORMATS)}")
    parts = read_parts(src, src_format)
    with atomic_folder(dst, force=force) as tmp:
        if to == "saekit":
            parts_to_sae(parts).save(tmp, sparsity=parts.sparsity)
        else:  # through a saekit SAE, so every setting and tensor shape is checked once
            write_parts(sae_to_parts(parts_to_sae(parts), parts.sparsity), tmp, to)
    return Path(dst)


# ----------------------------------------------------------------------------- file helpers


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text + "\n")
