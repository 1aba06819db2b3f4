"""Restricted loading of pickled `.pt` files (the original mats_sae_training format).

`torch.save` files are pickles; unpickling untrusted data runs arbitrary code. Everything
here goes through torch's `weights_only` unpickler, which only rebuilds tensors, storages,
containers and primitive values, plus the one extra class we allow: the original config
class `sae_training.config.LanguageModelSAERunnerConfig`, mapped to a plain-data stand-in.
Any other global is refused and the error names it. Storages saved on a GPU (`cuda:0`) are
mapped to the CPU.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Where the original config class lived over the codebase's history.
LEGACY_CONFIG_CLASSES = (
    "sae_training.config.LanguageModelSAERunnerConfig",
    "sae_lens.training.config.LanguageModelSAERunnerConfig",
)


class LegacyFormatError(ValueError):
    """A `.pt` file that cannot be read safely or is not in an expected layout."""


class LegacyConfigState:
    """Stand-in for the original config class: keeps the pickled fields as a plain dict.

    Never runs any code of the original class (no `__post_init__`, no wandb import).
    """

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise LegacyFormatError(f"unexpected pickled config state: {type(state).__name__}")
        self.fields = dict(state)


@dataclass
class LegacyCheckpoint:
    """The content of an original `final_sparse_autoencoder_*.pt` file."""

    cfg: dict[str, Any]
    """The pickled config's fields, with `torch.device`/`torch.dtype` turned into strings."""
    state_dict: dict[str, torch.Tensor]
    """`W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]`, `b_dec [d_in]`."""


def safe_torch_load(path: str | Path, *, allow_legacy_config: bool = False) -> Any:
    """`torch.load` restricted to tensors and plain data, every storage mapped to the CPU.

    With `allow_legacy_config`, the original config class unpickles to `LegacyConfigState`.
    Raises `LegacyFormatError` naming the refused global for anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    _check_zip_names(path)
    allowed = [(LegacyConfigState, name) for name in LEGACY_CONFIG_CLASSES]
    try:
        with torch.serialization.safe_globals(allowed if allow_legacy_config else []):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise LegacyFormatError(_refusal_message(path, str(err))) from None
    except Exception as err:  # noqa: BLE001 - any failure to parse untrusted bytes is "unreadable"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LegacyFormatError(f"{path} is not a readable PyTorch file: {first}") from None


def _check_zip_names(path: Path) -> None:
    """Refuse a zip-format .pt whose entry names leave its folder (absolute or `..`)."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise LegacyFormatError(f"{path} is a damaged zip archive: {err}") from None
    for name in names:
        parts = name.replace("\\", "/").split("/")
        if name.startswith("/") or ".." in parts or ":" in parts[0]:
            raise LegacyFormatError(f"refused to load {path}: entry {name!r} points outside the archive")


def _refusal_message(path: Path, torch_message: str) -> str:
    """Rewrite torch's refusal: name the global, and don't suggest turning the check off."""
    match = re.search(r"GLOBAL ([\w.]+)", torch_message)
    if match:
        return (
            f"refused to load {path}: its pickle needs the global '{match.group(1)}', which is "
            "not a tensor, a storage or a known SAE config class, so the file may run code. "
            "Nothing was executed."
        )
    first_line = torch_message.strip().splitlines()[0] if torch_message.strip() else "?"
    return f"refused to load {path}: {first_line}. Nothing was executed."


def load_legacy_checkpoint(path: str | Path) -> LegacyCheckpoint:
    """Read an original `{"cfg": LanguageModelSAERunnerConfig, "state_dict": {...}}` file."""
    obj = safe_torch_load(path, allow_legacy_config=True)
    if not isinstance(obj, dict) or "state_dict" not in obj or "cfg" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise LegacyFormatError(
            f"{path}: expected a dict with 'cfg' and 'state_dict' (the mats_sae_training "
            f"format), found {keys}"
        )
    cfg = obj["cfg"]
    if isinstance(cfg, LegacyConfigState):
        fields = cfg.fields
    elif isinstance(cfg, dict):
        fields = cfg
    else:
        raise LegacyFormatError(f"{path}: 'cfg' is a {type(cfg).__name__}, not a config")
    state_dict = {k: v for k, v in obj["state_dict"].items() if isinstance(v, torch.Tensor)}
    missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k not in state_dict]
    if missing:
        raise LegacyFormatError(
            f"{path}: state_dict lacks {missing}; it has {sorted(state_dict)}"
        )
    return LegacyCheckpoint(cfg={k: _plain(v) for k, v in fields.items()}, state_dict=state_dict)


def _plain(value: Any) -> Any:
    """torch.device / torch.dtype -> str; everything else unchanged."""
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return value


def legacy_hook_name(cfg: dict[str, Any]) -> str:
    """The hook the SAE was trained on (`hook_point`, or the template filled with the layer)."""
    if cfg.get("hook_point"):
        return str(cfg["hook_point"])
    template = cfg.get("hook_point_template")
    if template and "hook_point_layer" in cfg:
        return str(template).format(layer=cfg["hook_point_layer"])
    raise LegacyFormatError("legacy config names no hook_point (nor hook_point_template)")


def legacy_sae_settings(ckpt: LegacyCheckpoint) -> dict[str, Any]:
    """Map an original config to saekit's: architecture, sizes and metadata.

    The original SAE is saekit's `relu` architecture in its original form: the decoder bias
    is subtracted from the input, and decoder rows are kept at unit norm during training.
    Sizes come from the weights (the config's `d_sae` / `expansion_factor` is checked).
    """
    cfg, sd = ckpt.cfg, ckpt.state_dict
    d_in, d_sae = sd["W_enc"].shape
    if cfg.get("is_transcoder"):
        raise LegacyFormatError("legacy transcoders (is_transcoder=True) are not supported")
    if cfg.get("d_in") is not None and int(cfg["d_in"]) != d_in:
        raise LegacyFormatError(f"config d_in={cfg['d_in']} but W_enc has d_in={d_in}")
    expected_d_sae = cfg.get("d_sae")
    if expected_d_sae is None and isinstance(cfg.get("expansion_factor"), int):
        expected_d_sae = d_in * cfg["expansion_factor"]
    if expected_d_sae is not None and int(expected_d_sae) != d_sae:
        raise LegacyFormatError(f"config d_sae={expected_d_sae} but W_enc has d_sae={d_sae}")
    metadata: dict[str, Any] = {"hook_name": legacy_hook_name(cfg)}
    fields = {
        "model_name": "model_name",
        "hook_point_layer": "hook_layer",
        "hook_point_head_index": "hook_head_index",
        "dataset_path": "dataset_path",
        "context_size": "context_size",
        "prepend_bos": "prepend_bos",
    }
    for old, new in fields.items():
        if cfg.get(old) is not None:
            metadata[new] = cfg[old]
    metadata["legacy_config"] = {k: v for k, v in cfg.items() if _is_json_scalar(v)}
    settings: dict[str, Any] = {
        "architecture": "relu",
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "apply_b_dec_to_input": True,
        "decoder_norm": "unit",
        "dtype": str(sd["W_enc"].dtype).removeprefix("torch."),
        "metadata": metadata,
    }
    if cfg.get("l1_coefficient") is not None:
        settings["l1_coefficient"] = float(cfg["l1_coefficient"])
    return settings


def _is_json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))
