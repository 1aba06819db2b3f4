"""Activation cache on disk: safetensors shards + ``manifest.json``, resumable and verified.

Layout of a cache folder::

    manifest.json              settings, one entry per complete shard, data position
    shard_00000.safetensors    one tensor per hook, [tokens_in_shard, D], in the cache dtype
    ...

A shard is written to a temporary file and renamed, then recorded in the manifest (also
written atomically). Only shards listed in the manifest exist for readers; a rerun after a
kill removes unlisted shard files and continues from the recorded data position, so every
token is cached exactly once. Readers check each shard's size and sha256 before use.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from tqdm.auto import tqdm

from saekit.data.activations import ActivationSource
from saekit.data.provenance import Provenance, token_windows
from saekit.dtypes import MODEL_DTYPES, torch_dtype
from saekit.fileio import atomic_write_bytes

MANIFEST = "manifest.json"
FORMAT = "saekit-activation-cache/1"
# A shard, or the temporary file of one being written (saekit.fileio names it .NAME.XXXX.tmp).
_SHARD_FILE = re.compile(r"^(shard_\d{5,}\.safetensors|\.(shard_\d{5,}\.safetensors|manifest\.json)\.\w+\.tmp)$")
# Settings that must match when a cache is continued (besides the provenance record).
_SETTINGS = ("provenance", "hooks", "dims", "dtype", "shard_tokens")


class CacheError(ValueError):
    """A cache folder that is missing, incompatible, incomplete or corrupted."""


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a cache folder; ``CacheError`` if there is none or it is malformed."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CacheError(f"{str(folder)!r} is not an activation cache (no {MANIFEST})") from err
    except (OSError, json.JSONDecodeError) as err:
        raise CacheError(f"cannot read {str(path)!r}: {err}") from err
    if manifest.get("format") != FORMAT:
        raise CacheError(f"{str(path)!r} is not a {FORMAT} manifest")
    return manifest


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_bytes(folder / MANIFEST, json.dumps(manifest, indent=1).encode())


def _check_shard_sizes(folder: Path, manifest: dict[str, Any]) -> None:
    for shard in manifest["shards"]:
        path = folder / shard["file"]
        size = path.stat().st_size if path.exists() else None
        if size != shard["bytes"]:
            raise CacheError(
                f"shard {str(path)!r} is missing or truncated ({size} bytes, manifest says "
                f"{shard['bytes']}); the cache is corrupted, rebuild it"
            )


def build_cache(
    lm: Any,
    prov: Provenance,
    tokens: int,
    out: str | os.PathLike,
    *,
    store_dtype: str | None = None,
    shard_tokens: int = 16384,
    rows_per_forward: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Cache ``tokens`` kept-token activations at ``prov.hooks`` into ``out``.

    The windows are those of ``prov``'s training documents (every ``holdout_every``-th
    document is left out, held back for evaluation as in training; 0 caches every
    document). Activations are stored in ``store_dtype`` (default: the model's dtype). Every
    shard holds exactly ``shard_tokens`` rows except the last, which holds the rest (a dataset
    that runs out first sets ``exhausted``). If ``out`` already holds a cache with the same
    settings, it is continued (or left alone if complete); a larger ``tokens`` extends it.
    The manifest records ``prov``; returns the manifest.
    """
    store_dtype = store_dtype or prov.dtype
    store = torch_dtype(store_dtype, MODEL_DTYPES)
    if tokens < 1 or shard_tokens < 1:
        raise ValueError(f"tokens and shard_tokens must be >= 1, got {tokens}, {shard_tokens}")
    if not prov.hooks:
        raise ValueError("the provenance record names no hook to cache")
    hooks = list(prov.hooks)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "provenance": prov.to_dict(),
        "hooks": hooks,
        "dims": {h: int(lm.hook_dim(h)) for h in hooks},
        "dtype": store_dtype,
        "shard_tokens": shard_tokens,
    }
    manifest = _open_for_writing(folder, settings)
    manifest["tokens_target"] = max(tokens, manifest.get("tokens_target", 0))
    if manifest["tokens"] >= tokens or manifest["exhausted"]:
        return manifest

    windows = token_windows(prov, lm.tokenizer, "train" if prov.holdout_every else "all")
    # The position after the last shard: token windows before a forward + its rows already cached.
    position = manifest["position"] or {"windows": None, "skip_rows": 0}
    if position["windows"] is not None:
        windows.load_state_dict(position["windows"])
    skip = position["skip_rows"]
    source = ActivationSource(lm, hooks, windows, rows_per_forward)
    bar = tqdm(
        total=tokens,
        initial=manifest["tokens"],
        unit="tok",
        unit_scale=True,
        desc="caching",
        disable=not progress,
        dynamic_ncols=True,
    )
    pending: list[dict[str, torch.Tensor]] = []
    held = 0
    with bar:
        while manifest["tokens"] + held < tokens:
            before = windows.state_dict()
            chunk = next(source, None)
            if chunk is None:
                manifest["exhausted"] = True
                break
            chunk = {h: t.to("cpu", store) for h, t in chunk.items()}
            rows = next(iter(chunk.values())).shape[0]
            offset, skip = min(skip, rows), max(skip - rows, 0)  # rows cached before a restart
            while offset < rows and manifest["tokens"] + held < tokens:
                take = min(rows - offset, shard_tokens - held, tokens - manifest["tokens"] - held)
                pending.append({h: t[offset : offset + take] for h, t in chunk.items()})
                held, offset = held + take, offset + take
                bar.update(take)
                if held == shard_tokens or manifest["tokens"] + held == tokens:
                    after = (
                        {"windows": windows.state_dict(), "skip_rows": 0}
                        if offset == rows
                        else {"windows": before, "skip_rows": offset}
                    )
                    _write_shard(folder, manifest, pending, after)
                    pending, held = [], 0
        if pending:  # the source ran out
            _write_shard(
                folder, manifest, pending, {"windows": windows.state_dict(), "skip_rows": 0}
            )
    manifest["complete"] = True
    _write_manifest(folder, manifest)
    return manifest


def _open_for_writing(folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest to continue (checked against ``settings``) or a new one; drop leftovers."""
    if (folder / MANIFEST).exists():
        manifest = read_manifest(folder)
        diff = [k for k in _SETTINGS if manifest.get(k) != settings[k]]
        if diff:
            details = ", ".join(f"{k}: {manifest.get(k)!r} != {settings[k]!r}" for k in diff)
            raise CacheError(
                f"{str(folder)!r} holds a cache with other settings ({details}); use another --out"
            )
        _check_shard_sizes(folder, manifest)
    else:
        others = [p.name for p in folder.iterdir() if not _SHARD_FILE.match(p.name)]
        if others:
            raise CacheError(f"{str(folder)!r} is not empty and holds no {MANIFEST}: {others[:5]}")
        manifest = {
            "format": FORMAT,
            **settings,
            "tokens": 0,
            "tokens_target": 0,
            "complete": False,
            "exhausted": False,
            "position": None,
            "shards": [],
        }
    listed = {s["file"] for s in manifest["shards"]}
    for path in folder.iterdir():
        if _SHARD_FILE.match(path.name) and path.name not in listed:
            path.unlink()  # half-written or never recorded: redone from the recorded position
    return manifest


def _write_shard(
    folder: Path,
    manifest: dict[str, Any],
    chunks: list[dict[str, torch.Tensor]],
    position: dict[str, Any],
) -> None:
    tensors = {h: torch.cat([c[h] for c in chunks]).contiguous() for h in chunks[0]}
    data = safetensors.torch.save(tensors, metadata={"format": FORMAT})
    name = f"shard_{len(manifest['shards']):05d}.safetensors"
    atomic_write_bytes(folder / name, data)
    n = next(iter(tensors.values())).shape[0]
    manifest["shards"].append(
        {"file": name, "tokens": n, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    )
    manifest["tokens"] += n
    manifest["position"] = position
    manifest["complete"] = False
    _write_manifest(folder, manifest)


class CachedActivations:
    """A cache folder as an activation source: one shard per item, ``dict[hook, Tensor[N, D]]``.

    Shards come in a permuted order seeded by ``seed`` (a new permutation each epoch), as
    float32 on ``device``; feed it to a ``ShuffleBuffer`` holding several shards to mix
    across them. Each shard's size and sha256 are checked against the manifest before use:
    a corrupted shard raises ``CacheError``. ``state_dict()`` is the number of shards read.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        hooks: list[str] | None = None,
        seed: int = 0,
        epochs: int = 1,
        shuffle_shards: bool = True,
        device: str | torch.device = "cpu",
        allow_incomplete: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if not self.manifest["complete"] and not allow_incomplete:
            raise CacheError(
                f"cache {str(self.folder)!r} is incomplete ({self.manifest['tokens']} of "
                f"{self.manifest['tokens_target']} tokens); rerun `saekit cache` to finish it"
            )
        if not self.manifest["shards"]:
            raise CacheError(f"cache {str(self.folder)!r} holds no shard")
        _check_shard_sizes(self.folder, self.manifest)
        self.hooks = list(self.manifest["hooks"]) if hooks is None else list(hooks)
        unknown = [h for h in self.hooks if h not in self.manifest["hooks"]]
        if unknown:
            raise CacheError(
                f"hooks {unknown} are not in the cache; it holds {self.manifest['hooks']}"
            )
        self.dims: dict[str, int] = {h: self.manifest["dims"][h] for h in self.hooks}
        self.seed, self.epochs, self.shuffle_shards = seed, epochs, shuffle_shards
        self.device = torch.device(device)
        self._shards_done = 0

    @property
    def tokens(self) -> int:
        """Tokens per epoch."""
        return int(self.manifest["tokens"])

    def shard_order(self, epoch: int) -> list[int]:
        """Indices of the shards in the order they are read in ``epoch``."""
        n = len(self.manifest["shards"])
        if not self.shuffle_shards:
            return list(range(n))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=gen).tolist()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        n = len(self.manifest["shards"])
        if self._shards_done >= n * self.epochs:
            raise StopIteration
        epoch, i = divmod(self._shards_done, n)
        tensors = self.load_shard(self.shard_order(epoch)[i])
        self._shards_done += 1
        return {h: tensors[h].to(self.device, torch.float32) for h in self.hooks}

    def skip(self) -> None:
        """Pass over the next shard without reading it (rank sharding)."""
        self._shards_done = min(self._shards_done + 1, len(self.manifest["shards"]) * self.epochs)

    def load_shard(self, index: int) -> dict[str, torch.Tensor]:
        """Shard ``index`` as stored (cache dtype, CPU), after checking its size and sha256."""
        shard = self.manifest["shards"][index]
        path = self.folder / shard["file"]
        data = path.read_bytes()
        if len(data) != shard["bytes"] or hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise CacheError(
                f"shard {str(path)!r} is corrupted (size or sha256 differs from "
                f"the manifest); rebuild the cache"
            )
        return safetensors.torch.load(data)

    def state_dict(self) -> dict[str, Any]:
        return {"shards_done": self._shards_done, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(
                f"state was taken with seed {state['seed']}, this source has seed {self.seed}"
            )
        self._shards_done = int(state["shards_done"])
