"""Mean-pooled activations of texts: one model pass feeds the residual baseline and every SAE.

A text's representation is the mean over its tokens of the hook's activation (for the
baseline) or of an SAE's feature activations, with special tokens (BOS, EOS, padding)
left out, as SAEBench's sparse probing defines it. Texts are truncated to `context`
tokens (BOS included). Results are cached on disk, keyed by the model, hook, settings and
texts, and for SAE features by the SAE's weights too, so a second run costs no forward.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.paths import cache_root

POOLING_VERSION = 1


def tokenize_texts(
    tokenizer, texts: Sequence[str], context: int, bos_token_id: int | None
) -> list[list[int]]:
    """Token ids of each text, BOS first when `bos_token_id` is given, cut to `context`."""
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    prefix = [] if bos_token_id is None else [bos_token_id]
    return [(prefix + ids)[:context] for ids in encoded]


def keep_mask(input_ids_BT: Tensor, attention_mask_BT: Tensor, special_ids: set[int]) -> Tensor:
    """True at real, non-special positions: the positions mean pooling averages over."""
    keep_BT = attention_mask_BT.bool().clone()
    for token_id in special_ids:
        keep_BT &= input_ids_BT != token_id
    return keep_BT


def mean_pool(acts_BTX: Tensor, keep_BT: Tensor) -> Tensor:
    """Mean over the kept positions of each row; a row with none kept pools to zeros."""
    keep = keep_BT.to(acts_BTX.dtype).unsqueeze(-1)
    counts_B1 = keep.sum(dim=1).clamp_min(1)
    return (acts_BTX * keep).sum(dim=1) / counts_B1


def sae_fingerprint(sae) -> str:
    """A hash of an SAE's weights and config: equal hashes mean equal feature activations."""
    digest = hashlib.sha256()
    digest.update(json.dumps(sae.cfg.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(sae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


class PooledCache:
    """Activations on disk (`.pt` files loaded with `weights_only=True`), or nowhere if `folder` is None."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = None if folder is None else Path(folder)

    def _path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key}.pt"

    def get(self, key: str) -> Any:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def put(self, key: str, value: Any) -> None:
        """Store a tensor, or a dict of tensors and plain values."""
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(value.cpu() if isinstance(value, Tensor) else value, tmp)
        tmp.replace(path)


def default_cache() -> PooledCache:
    """`$SAEKIT_CACHE/evals/pooled`."""
    return PooledCache(cache_root() / "evals" / "pooled")


@torch.no_grad()
def pooled_activations(
    lm,
    hook: str,
    texts: Sequence[str],
    saes: Mapping[str, torch.nn.Module],
    *,
    context: int = 128,
    prepend_bos: bool = True,
    batch_rows: int = 16,
    cache: PooledCache | None = None,
    progress: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean-pooled hook activations `[N, D]` and SAE features `{name: [N, F]}` of `texts`.

    One forward per batch (texts sorted by length to save padding) serves the baseline and
    every SAE; with a cache, only what is missing is computed.
    """
    cache = cache or PooledCache(None)
    bos = lm.bos_token_id if prepend_bos else None
    ids = tokenize_texts(lm.tokenizer, texts, context, bos)
    base = _key(POOLING_VERSION, lm.spec, hook, context, bos, ids)
    keys = {name: _key(base, sae_fingerprint(sae)) for name, sae in saes.items()}
    resid_ND = cache.get(base)
    feats = {name: cache.get(key) for name, key in keys.items()}
    todo = [name for name, value in feats.items() if value is None]
    if resid_ND is not None and not todo:
        return resid_ND, feats  # type: ignore[return-value]

    special = lm.special_token_ids
    pad = lm.tokenizer.pad_token_id
    pad = pad if pad is not None else (lm.tokenizer.eos_token_id or 0)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    resid_chunks: list[tuple[list[int], Tensor]] = []
    feat_chunks: dict[str, list[Tensor]] = {name: [] for name in todo}
    for start in tqdm(range(0, len(order), batch_rows), desc=f"pool {hook}", disable=not progress):
        rows = order[start : start + batch_rows]
        width = max(len(ids[i]) for i in rows)
        input_ids_BT = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_BT = torch.zeros((len(rows), width), dtype=torch.long)
        for b, i in enumerate(rows):
            input_ids_BT[b, : len(ids[i])] = torch.tensor(ids[i])
            attention_BT[b, : len(ids[i])] = 1
        acts_BTD = lm.run_to_hooks(input_ids_BT, [hook], attention_mask=attention_BT)[hook]
        keep_BT = keep_mask(input_ids_BT, attention_BT, special).to(acts_BTD.device)
        resid_chunks.append((rows, mean_pool(acts_BTD.float(), keep_BT).cpu()))
        row_M = keep_BT.nonzero()[:, 0]
        counts_B = keep_BT.sum(dim=1).clamp_min(1)
        for name in todo:
            sae = saes[name]
            param = next(sae.parameters())
            kept_MD = acts_BTD[keep_BT].to(device=param.device, dtype=param.dtype)
            feats_MF = sae.encode(kept_MD).float()
            pooled_BF = torch.zeros(len(rows), feats_MF.shape[-1], device=feats_MF.device)
            pooled_BF.index_add_(0, row_M.to(feats_MF.device), feats_MF)
            feat_chunks[name].append((pooled_BF / counts_B.to(pooled_BF.device)[:, None]).cpu())
    inverse = torch.tensor(order).argsort()
    resid_ND = torch.cat([chunk for _, chunk in resid_chunks])[inverse]
    cache.put(base, resid_ND)
    for name in todo:
        feats[name] = torch.cat(feat_chunks[name])[inverse]
        cache.put(keys[name], feats[name])
    return resid_ND, feats  # type: ignore[return-value]
