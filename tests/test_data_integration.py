"""The data pipeline on the real default model (smollm2-135m)."""

from __future__ import annotations

import itertools

import pytest
import torch

from saekit.data import (
    ActivationSource,
    CachedActivations,
    TokenWindows,
    build_cache,
    iter_documents,
    iter_token_batches,
)
from saekit.data.provenance import Provenance

pytestmark = pytest.mark.integration
HOOK = "blocks.15.hook_resid_pre"


def _windows(lm):
    return TokenWindows(iter_documents("builtin:python-docs"), lm.tokenizer, 128)


def test_bos_position_is_excluded_and_would_dominate(default_lm):
    ids_BT, keep_BT = next(iter_token_batches(_windows(default_lm), 4))
    assert (ids_BT[:, 0] == default_lm.tokenizer.bos_token_id).all() and not keep_BT[:, 0].any()
    norms_BT = default_lm.run_to_hooks(ids_BT, [HOOK])[HOOK].norm(dim=-1)
    assert norms_BT[:, 0].min() > 10 * norms_BT[keep_BT].median()


def test_cache_of_the_default_model_reads_back_as_the_live_stream(default_lm, tmp_path):
    prov = Provenance(hooks=(HOOK,), holdout_every=0)
    build_cache(default_lm, prov, 600, tmp_path, shard_tokens=256, rows_per_forward=4, progress=False)
    cached = list(CachedActivations(tmp_path, shuffle_shards=False))
    assert [len(c[HOOK]) for c in cached] == [256, 256, 88]
    live = list(itertools.islice(ActivationSource(default_lm, [HOOK], _windows(default_lm), 4), 2))
    torch.testing.assert_close(
        torch.cat([c[HOOK] for c in cached]), torch.cat([c[HOOK] for c in live])[:600]
    )
