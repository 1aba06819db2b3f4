"""A run's data: the model (or an activation cache), the shuffle buffer and the provenance."""

from __future__ import annotations

import dataclasses
from typing import Any

from saekit.data.provenance import Provenance, activation_source, default_hook
from saekit.data.strided import strided_source
from saekit.dtypes import DTYPES
from saekit.training.config import TrainConfig
from saekit.training.transcoders import hook_pairs, layers_in_cache


def open_data(cfg: TrainConfig, device: Any) -> tuple[Any, Any, list[str], dict[str, int], Provenance]:
    """The model (None when training from a cache), shuffle buffer, (input, output) hook
    pairs, widths, provenance."""
    from saekit.data import CachedActivations, ShuffleBuffer
    from saekit.data.activations import LimitedSource

    if cfg.diff_model:  # two models on the same tokens
        from saekit.training.crosscoder import open_diff_data

        return open_diff_data(cfg, device)
    if cfg.activations:
        source = CachedActivations(cfg.activations, seed=cfg.seed, epochs=10**9, device=device)
        prov = cache_provenance(cfg, source.manifest)
        hooks = cfg.hooks or (() if cfg.transcoders else prov.hooks)
        pairs = hook_pairs(hooks, cfg.hook_out, cfg.transcoders, layers_in_cache(prov.hooks), "")
        needed = list(dict.fromkeys(h for pair in pairs for h in pair))
        missing = [h for h in needed if h not in prov.hooks]
        if missing:
            raise ValueError(f"hooks {missing} are not in the cache; it holds {list(prov.hooks)}")
        source.hooks = needed
        dims = {h: int(source.manifest["dims"][h]) for h in needed}
        lm = None
    else:
        from saekit.models import load_model

        lm = load_model(cfg.model, device=device, dtype=DTYPES[cfg.dtype])
        default = default_hook(lm.n_layers)
        pairs = hook_pairs(cfg.hooks, cfg.hook_out, cfg.transcoders, lm.n_layers, default)
        needed = list(dict.fromkeys(h for pair in pairs for h in pair))
        dims = {h: lm.hook_dim(h) for h in needed}  # also validates every hook name
        prov = Provenance.of(cfg).replace(hooks=tuple(needed))
        part = "train" if prov.holdout_every else "all"
        source = activation_source(
            prov, lm, cfg.forward_rows, part, repeat=True, expected_tokens=cfg.tokens
        )
    source = strided_source(source, device)  # rank sharding under torchrun
    source = LimitedSource(source, cfg.tokens)  # compute no activation the run won't train on
    buffer = ShuffleBuffer(source, cfg.buffer_tokens, cfg.batch_tokens, cfg.seed)
    return lm, buffer, pairs, dims, prov


def cache_provenance(cfg: TrainConfig, manifest: dict) -> Provenance:
    """The cache's record; a data setting of `cfg` that differs from it (and from the default,
    i.e. was set) is an error naming it, since the cache decides what the SAE trains on."""
    prov = Provenance.from_manifest(manifest)
    mine, default = Provenance.of(cfg), Provenance()
    fields = {
        f.name for f in dataclasses.fields(Provenance)
        if f.name != "hooks" and getattr(mine, f.name) != getattr(default, f.name)
    }  # fmt: skip
    clashes = mine.conflicts(prov, fields)
    if clashes:
        raise ValueError(
            f"--activations {cfg.activations}: the cache was made with other data settings "
            f"({'; '.join(clashes)}, given != cache); drop these flags or make a new cache"
        )
    return prov
