"""`load_sae(spec)`: one entry point for every place an SAE can live."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from saekit.io import hub
from saekit.io.converters import detect_format, read_sae

if TYPE_CHECKING:
    from saekit.saes import SAE


def load_sae(
    spec: str | Path,
    sae_id: str | None = None,
    *,
    device: str = "cpu",
    revision: str | None = None,
    check_weights: bool = True,
) -> SAE:
    """Load an SAE, in eval mode, from any of:

    - a local SAE folder (saekit, SAELens, EleutherAI sparsify, dictionary_learning);
    - a legacy mats_sae_training `.pt` file (restricted unpickling, GPU files load on CPU);
    - `hf://OWNER/REPO/PATH`: a folder or file inside a hub repo;
    - `OWNER/REPO` with `sae_id` the path inside it (for registered repos, the SAE id);
    - a release name from the registry with `sae_id`, e.g.
      `load_sae("gpt2-small-res-jb", "blocks.8.hook_resid_pre")`.

    Hub files come through `huggingface_hub`, so the HF cache and `HF_HUB_OFFLINE=1` work.
    Non-float or NaN/inf weights are refused unless `check_weights=False` (for inspection).
    """
    spec_str = str(spec)
    if spec_str.startswith(hub.HUB_PREFIX):
        repo_id, path = hub.parse_hub_spec(spec_str)
        if sae_id is not None:
            path = f"{path}/{sae_id}" if path else sae_id
        return _load_local(hub.fetch(repo_id, path, revision=revision), device, None, check_weights)
    local = Path(spec_str).expanduser()
    if local.exists():
        if sae_id is not None and local.is_dir():
            local = local / sae_id
        return _load_local(local, device, None, check_weights)
    registry = hub.load_registry()
    release = spec_str if spec_str in registry else hub.find_release_by_repo(spec_str)
    if release is not None:
        entry = hub.resolve_pretrained(release, sae_id)
        path = hub.fetch(entry.repo_id, entry.path, revision=revision)
        return _load_local(path, device, entry.format, check_weights)
    if hub.looks_like_repo_id(spec_str):
        return _load_local(hub.fetch(spec_str, sae_id, revision=revision), device, None, check_weights)
    raise FileNotFoundError(
        f"{spec_str!r} is not a local path, an hf:// path, a hub repo id or a registered "
        f"release (releases: {', '.join(hub.list_releases())})"
    )


def _load_local(path: Path, device: str, fmt: str | None = None, check: bool = True) -> SAE:
    fmt = fmt or detect_format(path)
    if fmt in ("saekit", "saelens") and path.is_dir():
        try:  # saekit and SAELens 6 folders load as they are, strictly
            return read_sae(path, "saekit", device=device, check_weights=check)
        except ValueError as strict_error:
            if _has_metadata_block(path):  # a saekit / SAELens 6 folder: its error stands
                raise
            try:  # an older, flat SAELens layout: map its keys first
                return read_sae(path, "saelens", device=device, check_weights=check)
            except ValueError:
                raise strict_error from None
    return read_sae(path, fmt, device=device, check_weights=check)


def _has_metadata_block(folder: Path) -> bool:
    """Whether cfg.json has SAELens 6's (and saekit's) `metadata` block."""
    try:
        return "metadata" in json.loads((folder / "cfg.json").read_text())
    except (OSError, ValueError):
        return False
