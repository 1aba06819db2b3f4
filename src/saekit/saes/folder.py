"""Save and load an SAE folder: `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`).

The layout, config keys and tensor names are SAELens 6's, so folders go both ways.
Loading validates everything and never falls back to a default silently.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from saekit.fileio import atomic_write
from saekit.saes.base import SAE
from saekit.saes.config import SAEConfig

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"
SCALER_FILENAME = "activation_scaler.json"  # SAELens: the unfolded activation scaling factor


def _saekit_version() -> str | None:
    try:
        return version("saekit")
    except PackageNotFoundError:
        return None


def save_sae_folder(
    sae: SAE, folder: str | os.PathLike[str], sparsity: Tensor | None = None
) -> None:
    """Write `sae` to `folder` (created if needed); `sparsity` is log10 feature density [d_sae]."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg.to_dict()
    cfg["metadata"]["saekit_version"] = cfg["metadata"]["saekit_version"] or _saekit_version()
    tensors = {name: t.detach().contiguous().cpu() for name, t in sae.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILENAME, lambda p: save_file(tensors, p))
    if sparsity is not None:
        if tuple(sparsity.shape) != (sae.cfg.d_sae,):
            raise ValueError(
                f"sparsity must have shape [{sae.cfg.d_sae}], got {tuple(sparsity.shape)}"
            )
        sp = {"sparsity": sparsity.detach().float().contiguous().cpu()}
        atomic_write(folder / SPARSITY_FILENAME, lambda p: save_file(sp, p))

    def write_cfg(p: str) -> None:
        Path(p).write_text(json.dumps(cfg, indent=2) + "\n")

    atomic_write(folder / CFG_FILENAME, write_cfg)


def read_cfg(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw `cfg.json` of an SAE folder; ValueError if missing or not a JSON object."""
    path = Path(folder) / CFG_FILENAME
    if not path.is_file():
        raise ValueError(f"{folder} is not an SAE folder: {CFG_FILENAME} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def load_sae_folder(
    folder: str | os.PathLike[str], device: str | None = None, *, check_weights: bool = True
) -> SAE:
    """Load an SAE folder written by saekit or SAELens 6 (eval mode).

    Weights must be floating point and, unless `check_weights=False` (to inspect a broken
    file), finite.
    """
    folder = Path(folder)
    data = read_cfg(folder)
    missing_keys = [k for k in ("d_in", "d_sae") if k not in data]
    if missing_keys:
        raise ValueError(f"{folder / CFG_FILENAME} lacks required key(s): {', '.join(missing_keys)}")
    if device is not None:
        data["device"] = str(device)
    elif isinstance(data.get("device"), str) and data["device"] != "cpu":
        from saekit.models.loading import resolve_device

        try:  # a folder saved on a GPU: open it there if this machine has one
            resolve_device(data["device"])
        except ValueError as err:
            raise ValueError(
                f"{folder / CFG_FILENAME} names device {data['device']!r}, which is not here "
                f"({err}); pass device='cpu' (saekit.load_sae(path, device='cpu'))"
            ) from None
    scale = _pop_activation_scale(folder, data)
    try:
        cfg = SAEConfig.from_dict(data)
    except TypeError as e:  # a wrongly typed value the dataclass could not take
        raise ValueError(f"{folder / CFG_FILENAME}: {e}") from None
    sae = SAE.from_config(cfg)

    path = folder / WEIGHTS_FILENAME
    if not path.is_file():
        raise ValueError(f"{folder} has no {WEIGHTS_FILENAME}")
    try:
        tensors = load_file(path, device=cfg.device)
    except SafetensorError as e:
        raise ValueError(f"{path} is not a valid safetensors file: {e}") from None
    expected = sae.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{path}: architecture {cfg.architecture!r} needs tensors {sorted(expected)}; "
            f"missing {missing}, unexpected {extra}"
        )
    for name, want in expected.items():
        _check_tensor(path, name, tensors[name], check_weights)
        if tensors[name].shape != want.shape:
            raise ValueError(
                f"{path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                f"expected {tuple(want.shape)} from cfg.json"
            )
        tensors[name] = tensors[name].to(want.dtype)
    sae.load_state_dict(tensors)
    if scale is not None:
        sae.fold_activation_scale(scale)
    return sae.eval()


def check_weights(sae: SAE, where: str | os.PathLike[str]) -> None:
    """ValueError naming the first non-float or non-finite tensor of `sae`."""
    for name, tensor in sae.state_dict().items():
        _check_tensor(Path(where), name, tensor, True)


def _check_tensor(path: Path, name: str, tensor: Tensor, finite: bool) -> None:
    if not tensor.is_floating_point():
        raise ValueError(f"{path}: tensor {name!r} is {tensor.dtype}, not floating point")
    if finite and not bool(tensor.isfinite().all()):
        bad = int((~tensor.isfinite()).sum())
        raise ValueError(
            f"{path}: tensor {name!r} holds {bad} NaN/inf value(s); load with "
            "check_weights=False (saekit info --no-check-weights) to inspect it"
        )


def load_sparsity(folder: str | os.PathLike[str]) -> Tensor | None:
    """log10 feature density from `sparsity.safetensors`, or None if the folder has none."""
    path = Path(folder) / SPARSITY_FILENAME
    if not path.is_file():
        return None
    tensors = load_file(path)
    if "sparsity" not in tensors:
        raise ValueError(f"{path} has no tensor 'sparsity' (found {sorted(tensors)})")
    return tensors["sparsity"]


def _pop_activation_scale(folder: Path, data: dict[str, Any]) -> float | None:
    """Honour SAELens's `normalize_activations="expected_average_only_in"` by folding.

    SAELens keeps the scaling factor beside the weights (activation_scaler.json) until it
    folds it in; saekit folds it at load time. Without a stored factor it refuses.
    """
    if data.get("normalize_activations") != "expected_average_only_in":
        return None
    path = folder / SCALER_FILENAME
    factor = json.loads(path.read_text()).get("scaling_factor") if path.is_file() else None
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
        raise ValueError(
            "normalize_activations='expected_average_only_in' needs the scaling factor in "
            f"{SCALER_FILENAME} ({{'scaling_factor': <float>}}); none found in {folder}"
        )
    data["normalize_activations"] = "none"
    return float(factor)
