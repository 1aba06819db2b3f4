"""Feature sparsity (log10 firing density per feature) from any place an SAE can live."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from saekit.io import hub
from saekit.io.converters import _single_tensor, load_legacy_sparsity


def load_feature_sparsity(
    spec: str | Path, sae_id: str | None = None, *, revision: str | None = None
) -> torch.Tensor:
    """log10 feature densities `[d_sae]` of an SAE.

    `spec` may be: a legacy `..._log_feature_sparsity.pt` file (read through the restricted
    unpickler), a legacy SAE `.pt` file (its sibling sparsity file is used), a
    `sparsity.safetensors` file, an SAE folder holding one, `hf://OWNER/REPO/PATH`, or a
    release name with `sae_id` (see `saekit.io.hub.list_releases()`).
    """
    spec_str = str(spec)
    if spec_str.startswith(hub.HUB_PREFIX):
        repo_id, path = hub.parse_hub_spec(spec_str)
        return _read_local(hub.fetch(repo_id, _sparsity_path(path), revision=revision))
    local = Path(spec_str).expanduser()
    if local.exists():
        return _read_local(local)
    if spec_str in hub.load_registry() or hub.find_release_by_repo(spec_str):
        release = spec_str if spec_str in hub.load_registry() else hub.find_release_by_repo(spec_str)
        entry = hub.resolve_pretrained(release, sae_id)
        if entry.sparsity is None:
            raise FileNotFoundError(f"release {release!r} publishes no feature sparsity for {entry.sae_id!r}")
        return _read_local(hub.download_file(entry.repo_id, entry.sparsity, revision=revision))
    if hub.looks_like_repo_id(spec_str):
        return _read_local(hub.fetch(spec_str, _sparsity_path(sae_id), revision=revision))
    raise FileNotFoundError(f"no such file, folder, hub path or release: {spec_str!r}")


def _sparsity_path(path: str | None) -> str:
    """Inside a hub repo: the sparsity file of an SAE folder, or the file itself."""
    if path and (path.endswith(".pt") or path.endswith(".safetensors")):
        if path.endswith(".pt") and not path.endswith("_log_feature_sparsity.pt"):
            return path[: -len(".pt")] + "_log_feature_sparsity.pt"
        return path
    return f"{path.strip('/')}/sparsity.safetensors" if path else "sparsity.safetensors"


def _read_local(path: Path) -> torch.Tensor:
    if path.is_dir():
        path = path / "sparsity.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path.parent} holds no sparsity.safetensors")
    if path.suffix == ".safetensors":
        return _single_tensor(load_file(str(path)))
    if path.suffix in {".pt", ".pth"}:
        if not path.stem.endswith("_log_feature_sparsity"):
            sibling = path.with_name(path.stem + "_log_feature_sparsity.pt")
            if sibling.is_file():
                path = sibling
        return load_legacy_sparsity(path)
    raise ValueError(f"{path}: not a sparsity file (.safetensors or legacy .pt)")
