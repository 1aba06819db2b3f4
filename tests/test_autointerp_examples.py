"""Autointerp examples: the one-pass collector's non-activating windows, storage, selection."""

from __future__ import annotations

import torch

from saekit.autointerp.examples import (
    ExampleCollector,
    collect_examples,
    decoder_neighbours,
    window_sides,
)
from saekit.autointerp.exampleset import ExampleSet


def test_window_sides_centre_like_delphi():
    assert window_sides(32) == (24, 7)  # example token at index 32 - 32 // 4
    assert window_sides(8) == (6, 1)
    assert window_sides(2) == (1, 0)


def test_random_windows_are_quiet_and_inside_rows():
    # one row of 10 tokens; feature 0 fires at 2 and 7, feature 1 never fires
    ids_BT = torch.arange(100, 110)[None]
    keep_BT = torch.ones(1, 10, dtype=torch.bool)
    acts_BTF = torch.zeros(1, 10, 2)
    acts_BTF[0, 2, 0], acts_BTF[0, 7, 0] = 1.0, 2.0
    c = ExampleCollector([5, 6], n_random=10, top_k=2, n_samples=4, context_left=1, context_right=1)
    c.update(ids_BT, keep_BT, acts_BTF)
    rnd = c.random_examples()
    # windows [t-1, t+1] inside the row (t in 1..8) with no firing token: f0 at t=4 and 5
    f0 = sorted(rnd.positions_FK[0][rnd.valid_FK[0]].tolist())
    assert f0 == [4, 5]
    k = rnd.positions_FK[0].tolist().index(5)
    assert rnd.tokens_FKW[0, k].tolist() == [104, 105, 106]
    assert sorted(rnd.positions_FK[1][rnd.valid_FK[1]].tolist()) == list(range(1, 9))
    assert rnd.acts_FKW[1].abs().sum() == 0
    assert c.result().top.positions_FK[0].tolist() == [7, 2]  # the base statistics still work


def test_hard_negatives_where_a_neighbour_fires():
    ids_BT = torch.arange(10)[None]
    keep_BT = torch.ones(1, 10, dtype=torch.bool)
    acts_BTF = torch.zeros(1, 10, 1)
    acts_BTF[0, 2, 0] = 1.0  # the feature itself
    nb_BTG = torch.zeros(1, 10, 2)
    nb_BTG[0, 3, 0] = 9.0  # next to the feature's token: window not quiet, never chosen
    nb_BTG[0, 6, 1] = 4.0
    nb_BTG[0, 8, 0] = 3.0
    c = ExampleCollector(
        [0], n_random=0, n_hard=5, neighbours_FN=torch.tensor([[0, 1]]), top_k=1,
        n_samples=1, context_left=1, context_right=1,
    )  # fmt: skip
    c.update(ids_BT, keep_BT, acts_BTF, nb_BTG)
    hard = c.hard_examples()
    assert hard.positions_FK[0][hard.valid_FK[0]].tolist() == [6, 8]  # strongest first
    assert hard.values_FK[0][hard.valid_FK[0]].tolist() == [0.0, 0.0]  # the feature is silent


def test_decoder_neighbours():
    from saekit.saes import SAE

    sae = SAE.create("relu", d_in=4, d_sae=4)
    with torch.no_grad():
        sae.W_dec.copy_(
            torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 1.0, 0, 0], [-1.0, -0.1, 0, 0]])
        )
    ids, cos = decoder_neighbours(sae, [0, 2], 2)
    assert ids.tolist() == [[1, 2], [1, 0]]
    assert abs(cos[0, 0].item() - 0.9 / (0.82**0.5)) < 1e-6


def _tiny_sae(tiny_model_dir, d_sae=16):
    from saekit.saes import SAE

    torch.manual_seed(0)
    meta = {"model_name": str(tiny_model_dir), "hook_name": "blocks.1.hook_resid_post",
            "dataset_path": "builtin:python-docs", "context_size": 24}  # fmt: skip
    return SAE.create("relu", d_in=64, d_sae=d_sae, metadata=meta)


def _batches(lm, n=6, rows=4, context=24):
    from saekit.data import TokenWindows, iter_documents, iter_token_batches

    windows = TokenWindows(iter_documents("builtin:python-docs"), lm.tokenizer, context)
    return [b for _, b in zip(range(n), iter_token_batches(windows, rows), strict=False)]


def test_collect_save_load_select(tiny_model_dir, tiny_lm, tmp_path):
    sae = _tiny_sae(tiny_model_dir)
    collected = collect_examples(
        sae, tiny_lm, _batches(tiny_lm), [0, 3, 5], window=8, top_k=12, n_samples=40,
        n_random=6, n_hard=3, n_neighbours=2,
    )  # fmt: skip
    ex = ExampleSet.from_collected(collected, tiny_lm.tokenizer, {"sae": "x"})
    ex.save(tmp_path)
    back = ExampleSet.load(tmp_path)
    assert back.feature_ids == [0, 3, 5] and back.meta == {"sae": "x"}
    assert back.token_text == ex.token_text
    for name in ("top", "samples"):
        a, b = getattr(collected.stats, name), getattr(back.collected.stats, name)
        assert torch.equal(a.tokens_FKW, b.tokens_FKW) and torch.equal(a.acts_FKW, b.acts_FKW)
    assert torch.equal(collected.random.positions_FK, back.collected.random.positions_FK)
    assert torch.equal(collected.hard.tokens_FKW, back.collected.hard.tokens_FKW)
    assert torch.equal(collected.neighbours_FN, back.collected.neighbours_FN)

    n = next(i for i in range(3) if int(collected.stats.fire_count_F[i]) > 30)
    fe = back.select(n, n_explain=4, n_activating=6, n_random=3, n_hard=2, n_quantiles=3)
    assert len(fe.explain) <= 4 and fe.explain and all(w.kind == "top" for w in fe.explain)
    assert [w.kind for w in fe.non_activating] == ["random"] * 3 + ["hard"] * 2
    assert all(max(w.acts) == 0 for w in fe.non_activating)
    assert all(w.acts[w.centre] > 0 for w in fe.explain + fe.activating)
    assert {w.quantile for w in fe.activating} <= {0, 1, 2}
    # no two chosen activating windows overlap (same row, centres closer than the window)
    s = back.collected.stats
    spots = []
    for w in fe.explain + fe.activating:
        src = s.top if w.kind == "top" else s.samples
        k = int(w.id.split(".")[-1]) if w.kind == "quantile" else int(w.id[3:])
        spots.append((int(src.rows_FK[n, k]), int(src.positions_FK[n, k])))
    for i, (r1, p1) in enumerate(spots):
        assert all(not (r1 == r2 and abs(p1 - p2) < 8) for r2, p2 in spots[i + 1 :])
    # the explain windows are the strongest fresh ones, in order
    vals = [w.acts[w.centre] for w in fe.explain]
    assert vals == sorted(vals, reverse=True)
    assert vals[0] == float(s.act_max_F[n])
