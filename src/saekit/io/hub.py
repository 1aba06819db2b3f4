"""The HF hub side of loading: the release registry and cached downloads.

Downloads go through `huggingface_hub` (`hf_hub_download` / `snapshot_download`), so the
local HF cache is used and `HF_HUB_OFFLINE=1` works.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

HUB_PREFIX = "hf://"


@dataclass(frozen=True)
class PretrainedSAE:
    """One SAE of a release: where its files are on the hub."""

    release: str
    sae_id: str
    repo_id: str
    path: str
    """File or folder inside the repo."""
    format: str
    """saelens | mats_pt | sparsify | dictionary_learning | saekit"""
    model: str | None = None
    sparsity: str | None = None
    """File inside the repo holding the log10 feature densities, if published."""
    stats: dict[str, Any] | None = None


@cache
def load_registry() -> dict[str, dict[str, Any]]:
    """The release registry shipped with saekit (`saekit/io/releases.yaml`)."""
    text = resources.files("saekit.io").joinpath("releases.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def list_releases() -> list[str]:
    """Names of the registered releases."""
    return sorted(load_registry())


def find_release_by_repo(repo_id: str) -> str | None:
    """The registered release stored in `repo_id`, if any."""
    for name, release in load_registry().items():
        if release["repo_id"] == repo_id:
            return name
    return None


def resolve_pretrained(release: str, sae_id: str | None) -> PretrainedSAE:
    """Look up one SAE of a registered release; unknown names list the valid ones."""
    registry = load_registry()
    if release not in registry:
        raise KeyError(f"unknown release {release!r}; registered releases: {', '.join(sorted(registry))}")
    entry = registry[release]
    ids = [sae["id"] for sae in entry["saes"]]
    if sae_id is None:
        if len(ids) != 1:
            raise ValueError(f"release {release!r} holds {len(ids)} SAEs; pass sae_id, one of: {', '.join(ids)}")
        sae_id = ids[0]
    for sae in entry["saes"]:
        if sae["id"] == sae_id:
            stats = {k: v for k, v in sae.items() if k not in ("id", "path", "sparsity")}
            return PretrainedSAE(
                release=release,
                sae_id=sae_id,
                repo_id=entry["repo_id"],
                path=sae["path"],
                format=entry["format"],
                model=entry.get("model"),
                sparsity=sae.get("sparsity"),
                stats=stats or None,
            )
    raise KeyError(f"release {release!r} has no SAE {sae_id!r}; valid ids: {', '.join(ids)}")


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """`hf://owner/repo[/path/in/repo]` -> (`owner/repo`, `path` or None)."""
    rest = spec.removeprefix(HUB_PREFIX).strip("/")
    parts = rest.split("/", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"bad hub path {spec!r}; expected hf://OWNER/REPO[/PATH]")
    return f"{parts[0]}/{parts[1]}", (parts[2] if len(parts) == 3 else None)


def looks_like_repo_id(spec: str) -> bool:
    """`owner/name` with no further path parts and no local file of that name."""
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not Path(spec).exists()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection within `timeout` seconds.

    False at once under `HF_HUB_OFFLINE=1`. Used to fail fast offline instead of letting
    `huggingface_hub` retry for tens of seconds.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _download(repo_id: str, what: str, call, **kwargs) -> Path:
    """Run a huggingface_hub download, from the HF cache alone when the hub is unreachable;
    every failure becomes one FileNotFoundError line naming the repo and the reason."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    online = hub_reachable()
    try:
        return Path(call(repo_id=repo_id, local_files_only=not online, **kwargs))
    except LocalEntryNotFoundError:
        why = "the hub cannot be reached (offline?)" if not online else "not found on the hub"
        raise FileNotFoundError(
            f"{repo_id}{what}: not a local path, and {why}; the HF cache does not hold it"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(f"{repo_id}{what}: not a local path; the hub said: {first}") from None


def download_file(repo_id: str, filename: str, *, revision: str | None = None) -> Path:
    """One file from the hub (or the HF cache)."""
    from huggingface_hub import hf_hub_download

    return _download(repo_id, f"/{filename}", hf_hub_download, filename=filename, revision=revision)


def download_folder(repo_id: str, folder: str | None, *, revision: str | None = None) -> Path:
    """A folder of a hub repo (or the whole repo) from the hub or the HF cache."""
    from huggingface_hub import snapshot_download

    patterns = [f"{folder.strip('/')}/*"] if folder else None
    root = _download(
        repo_id, f"/{folder}" if folder else "", snapshot_download,
        allow_patterns=patterns, revision=revision,
    )  # fmt: skip
    target = root / folder if folder else root
    if not target.exists():
        raise FileNotFoundError(f"hub repo {repo_id} has no folder {folder!r}")
    return target


def fetch(repo_id: str, path: str | None, *, revision: str | None = None) -> Path:
    """A file or a folder of a hub repo: a path with a file suffix is a file."""
    if path and Path(path).suffix in {".pt", ".pth", ".safetensors", ".json", ".bin"}:
        return download_file(repo_id, path, revision=revision)
    return download_folder(repo_id, path, revision=revision)
