"""Checkpoints: nested state (dicts, lists, numbers, tensors) as safetensors + JSON, atomically.

A checkpoint is a folder `checkpoints/step_XXXXXXXX/` holding `tensors.safetensors` and
`state.json` (the nesting, with tensors replaced by references). It is written under a
temporary name and renamed; then `checkpoints/latest` (a one-line text file naming the
folder) is replaced atomically. A crash at any moment leaves `latest` naming a complete
checkpoint. No pickle is involved, so loading a checkpoint runs no code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saekit.fileio import as_disk_full, atomic_write_text

_TENSOR_KEY = "__tensor__"


def _own(t: torch.Tensor, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """`t` as safetensors can write it: itself when it fills its storage alone (no copy: the
    shuffle buffer's store is the largest part of a checkpoint), else a copy (a view, or
    memory another tensor of this checkpoint shares)."""
    t = t.detach().cpu().contiguous()
    storage = t.untyped_storage()
    whole = t.storage_offset() == 0 and storage.nbytes() == t.numel() * t.element_size()
    shared = any(u.untyped_storage().data_ptr() == storage.data_ptr() for u in tensors.values())
    return t if whole and not shared else t.clone()


def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = _own(obj, tensors)
        return {_TENSOR_KEY: name}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__}")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR_KEY in obj:
            return tensors[obj[_TENSOR_KEY]]
        if "__dict__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(run_dir: str | Path, step: int, state: dict, keep: int = 1) -> Path:
    """Write `state` as checkpoint `step` of `run_dir`; keep the newest `keep` checkpoints."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".{final.name}.", suffix=".tmp"))
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors)
    try:
        save_file(tensors, str(tmp / "tensors.safetensors"))
        (tmp / "state.json").write_text(json.dumps(skeleton))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except BaseException as err:  # the previous checkpoint stays the latest
        shutil.rmtree(tmp, ignore_errors=True)
        need = sum(t.numel() * t.element_size() for t in tensors.values())
        full = as_disk_full(err, final, need)
        if full is not None:
            raise full from None
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(ckpt_root / "latest", final.name + "\n")
    older = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and p != final)
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".step_*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder `checkpoints/latest` names, or None when the run has no checkpoint."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    if not (folder / "state.json").is_file():
        raise FileNotFoundError(f"{pointer} names {folder.name}, which is incomplete or missing")
    return folder


def load_checkpoint(folder: str | Path) -> dict:
    """Read a checkpoint folder back into the nested state it was saved from."""
    folder = Path(folder)
    tensors = load_file(str(folder / "tensors.safetensors"))
    return _unflatten(json.loads((folder / "state.json").read_text()), tensors)
