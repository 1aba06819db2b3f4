"""The one-pass feature statistics equal a naive per-feature computation."""

from __future__ import annotations

import pytest
import torch

from saekit.analysis.features import FeatureStatsCollector, parse_feature_spec


def test_hand_worked_example():
    ids_BT = torch.tensor([[10, 11, 12, 13, 14]])
    keep_BT = torch.tensor([[False, True, True, True, True]])
    acts_BTF = torch.tensor([[5.0, 1.0, 3.0, 0.0, 2.0]])[..., None]  # pos 0 is masked out
    c = FeatureStatsCollector([7], top_k=2, n_samples=10, n_bins=4, context_left=1, context_right=1)
    c.update(ids_BT, keep_BT, acts_BTF)
    r = c.result()
    assert r.n_tokens == 4 and r.fire_count_F.tolist() == [3]
    assert r.density_F.tolist() == [0.75] and r.mean_act_F.tolist() == [2.0]
    assert r.act_max_F.tolist() == [3.0]
    # max 3 -> hi 4 (power of two above it), bins [0,1) [1,2) [2,3) [3,4)
    assert r.hist_hi_F.tolist() == [4.0] and r.hist_counts_FH.tolist() == [[0, 1, 1, 1]]
    assert r.top.values_FK.tolist() == [[3.0, 2.0]]
    assert r.top.tokens_FKW.tolist() == [[[11, 12, 13], [13, 14, -1]]]
    assert r.top.acts_FKW.tolist() == [[[1.0, 3.0, 0.0], [0.0, 2.0, 0.0]]]  # masked pos shows 0
    assert r.top.positions_FK.tolist() == [[2, 4]]
    # the sample holds every firing position (3 < 10), sorted by activation
    assert r.samples.values_FK[0][r.samples.valid_FK[0]].tolist() == [3.0, 2.0, 1.0]


def test_histogram_range_doubling_is_exact():
    torch.manual_seed(0)
    batches = [torch.rand(2, 8, 3) * s for s in (0.3, 1.0, 5.0, 40.0)]
    c = FeatureStatsCollector(range(3), n_bins=16)
    for acts in batches:
        c.update(torch.zeros(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.bool), acts)
    r = c.result()
    all_NF = torch.cat([a.reshape(-1, 3) for a in batches])
    for f in range(3):
        v = all_NF[:, f][all_NF[:, f] > 0]
        hi = 2.0 ** torch.frexp(v.max()).exponent.item()
        assert r.hist_hi_F[f] == hi
        expected = torch.bincount((v / hi * 16).long(), minlength=16)
        assert r.hist_counts_FH[f].tolist() == expected.tolist()


def test_parse_feature_spec():
    assert parse_feature_spec("0:4") == [0, 1, 2, 3]
    assert parse_feature_spec("3,17, 42") == [3, 17, 42]
    assert parse_feature_spec("0:2,9,1") == [0, 1, 9]
    with pytest.raises(ValueError, match="out of range"):
        parse_feature_spec("5:12", d_sae=10)
    with pytest.raises(ValueError, match="bad feature spec"):
        parse_feature_spec("a-b")


def _tiny_batches(lm, n_batches=3, rows=4, context=24):
    from saekit.data import TokenWindows, iter_documents, iter_token_batches

    windows = TokenWindows(iter_documents("builtin:python-docs"), lm.tokenizer, context)
    batches = iter_token_batches(windows, rows)
    return [next(batches) for _ in range(n_batches)]


@pytest.fixture(scope="module")
def tiny_sae(tiny_lm):
    """A random ReLU SAE on the tiny model whose features fire on about 20% of tokens."""
    from saekit.saes import SAE

    torch.manual_seed(0)
    hook = "blocks.2.hook_resid_pre"
    sae = SAE.create("relu", d_in=64, d_sae=40, metadata={"hook_name": hook})
    ids_NT = torch.cat([ids for ids, _ in _tiny_batches(tiny_lm)])
    x_ND = tiny_lm.run_to_hooks(ids_NT, [hook])[hook].flatten(0, 1)
    with torch.no_grad():
        sae.b_enc.copy_(-(x_ND @ sae.W_enc).quantile(0.8, dim=0))
    return sae


def test_batched_pass_equals_naive_per_feature(tiny_lm, tiny_sae):
    from saekit.analysis.features import collect_feature_stats

    batches = _tiny_batches(tiny_lm)
    features = [0, 3, 7, 11, 12, 25, 39]
    L, R, K = 3, 2, 5
    stats = collect_feature_stats(
        tiny_sae,
        tiny_lm,
        batches,
        features,
        top_k=K,
        n_samples=8,
        n_bins=32,
        context_left=L,
        context_right=R,
    )
    ids_NT = torch.cat([b[0] for b in batches])
    keep_NT = torch.cat([b[1] for b in batches])
    N, T = ids_NT.shape
    assert stats.n_rows == N and stats.n_tokens == int(keep_NT.sum())
    hook = "blocks.2.hook_resid_pre"
    with torch.no_grad():
        acts_NTD = tiny_lm.run_to_hooks(ids_NT, [hook])[hook]
        all_feats_NTF = tiny_sae.encode(acts_NTD) * keep_NT[..., None]
    for n, f in enumerate(features):
        a_NT = all_feats_NTF[..., f]
        fires = a_NT > 0
        assert fires.sum() > K  # the example is not degenerate
        assert stats.fire_count_F[n] == fires.sum()
        torch.testing.assert_close(stats.act_max_F[n], a_NT.max())
        torch.testing.assert_close(stats.mean_act_F[n].float(), a_NT[fires].mean())
        top = a_NT.flatten().topk(K).values
        torch.testing.assert_close(stats.top.values_FK[n], top, rtol=1e-5, atol=1e-6)
        hi = float(stats.hist_hi_F[n])
        assert hi / 2 <= a_NT.max() < hi
        expected_hist = torch.bincount((a_NT[fires] / hi * 32).long(), minlength=32)
        assert stats.hist_counts_FH[n].tolist() == expected_hist.tolist()
        for ex in (stats.top, stats.samples):
            for k in torch.nonzero(ex.valid_FK[n]).flatten().tolist():
                row, pos = int(ex.rows_FK[n, k]), int(ex.positions_FK[n, k])
                torch.testing.assert_close(ex.values_FK[n, k], a_NT[row, pos], rtol=1e-5, atol=1e-6)
                assert a_NT[row, pos] > 0
                for w, t in enumerate(range(pos - L, pos + R + 1)):
                    inside = 0 <= t < T
                    assert ex.tokens_FKW[n, k, w] == (ids_NT[row, t] if inside else -1)
                    want = a_NT[row, t] if inside else torch.tensor(0.0)
                    torch.testing.assert_close(ex.acts_FKW[n, k, w], want, rtol=1e-5, atol=1e-6)
        n_samples = int(stats.samples.valid_FK[n].sum())
        assert n_samples == min(8, int(fires.sum()))
        locs = {
            (int(r), int(p))
            for r, p, v in zip(
                stats.samples.rows_FK[n],
                stats.samples.positions_FK[n],
                stats.samples.valid_FK[n],
                strict=False,
            )
            if v
        }
        assert len(locs) == n_samples  # sampled without replacement


def test_samples_are_uniform_over_firing_positions():
    # 4000 firing positions with activations uniform on (0, 1], over 10 batches
    c = FeatureStatsCollector([0], n_samples=400, seed=1)
    values = torch.randperm(4000).add(1).float() / 4000
    for chunk in values.view(10, 4, 100):
        c.update(
            torch.zeros(4, 100, dtype=torch.long),
            torch.ones(4, 100, dtype=torch.bool),
            chunk[..., None],
        )
    sample = c.result().samples
    picked = sample.values_FK[0][sample.valid_FK[0]]
    assert picked.numel() == 400
    assert abs(picked.mean().item() - 0.5) < 0.05  # std of the mean is about 0.014
    assert (picked < 0.25).sum() > 60 and (picked > 0.75).sum() > 60
