"""Token sets (regex, letters, part of speech, names), GSEA enrichment, logit-weight moments,
and the original `sae_analysis` functions over them."""

from __future__ import annotations

import pytest
import torch

from saekit.analysis import token_sets as ts

VOCAB = {w: i for i, w in enumerate(
    ["Ġthe", "Ġran", "Ġquickly", "Ġhappier", "ĠMary", "ĠJohn", "Ġdogs", "Ġwhich", "Ġ1984",
     "ĠThe", ",", "ing", "Ġrun", "ĠRobert", "Ġtable", "Ġfaster", "Ġthey", "Ġcould"])}  # fmt: skip


def reference_running_sum(scores_V: torch.Tensor, members: set[int]) -> float:
    """GSEA statistic written out with a Python loop."""
    V, n = len(scores_V), len(members)
    running, best = 0.0, 0.0
    for i in scores_V.argsort(descending=True).tolist():
        running += 1 / n if i in members else -1 / (V - n)
        best = max(best, abs(running))
    return best


def test_ks_enrichment_matches_the_running_sum():
    g = torch.Generator().manual_seed(0)
    scores_FV = torch.randn(7, 50, generator=g)
    sets = {"a": {1, 4, 9}, "b": set(range(20, 35))}
    names, member_SV = ts.set_masks(sets, 50)
    got = ts.ks_enrichment(scores_FV, member_SV, chunk=3)
    for s, name in enumerate(names):
        for f in range(7):
            assert got[s, f].item() == pytest.approx(reference_running_sum(scores_FV[f], sets[name]), abs=1e-6)
    top = torch.zeros(1, 50)
    top[0, [1, 4, 9]] = 5.0  # the set ranked first: the maximum score
    assert ts.ks_enrichment(top, member_SV[:1])[0, 0].item() == pytest.approx(1.0)


def test_moments_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    x = torch.randn(4, 300, generator=torch.Generator().manual_seed(1)).exp()
    m = ts.moments(x)
    assert m["skewness"].numpy() == pytest.approx(stats.skew(x.numpy(), axis=1), rel=1e-4)
    assert m["kurtosis"].numpy() == pytest.approx(stats.kurtosis(x.numpy(), axis=1, fisher=False), rel=1e-4)
    assert m["std"].numpy() == pytest.approx(x.numpy().std(axis=1), rel=1e-4)


def test_part_of_speech_from_the_lexicon():
    pytest.importorskip("lemminflect")
    assert "VBD" in ts.pos_tags("ran") and "RB" in ts.pos_tags("quickly")
    assert "JJR" in ts.pos_tags("happier") and "RBR" in ts.pos_tags("faster")
    assert {"NNS", "VBZ"} <= ts.pos_tags("dogs") and "DT" in ts.pos_tags("the")
    assert {"WDT"} <= ts.pos_tags("which") and "PRP" in ts.pos_tags("they") and "MD" in ts.pos_tags("could")
    assert "NNP" in ts.pos_tags("Mary") and "CD" in ts.pos_tags("1984")
    sets = ts.pos_sets(VOCAB)
    assert VOCAB["Ġran"] in sets["pos_VBD"] and VOCAB[","] not in set().union(*sets.values())
    assert {VOCAB["ĠMary"], VOCAB["ĠJohn"], VOCAB["ĠRobert"]} <= sets["pos_NNP"]


def test_regex_letter_name_sets():
    sets = ts.regex_sets(VOCAB, {"starts_with_space": r"Ġ.*", "all_digits": r"^Ġ*\d+$"})
    assert VOCAB[","] not in sets["starts_with_space"] and sets["all_digits"] == {VOCAB["Ġ1984"]}
    letters = ts.letter_sets(VOCAB)
    assert {VOCAB["Ġthe"], VOCAB["ĠThe"], VOCAB["Ġtable"], VOCAB["Ġthey"]} == letters["t"]
    pytest.importorskip("names")
    names = ts.name_sets(VOCAB, k=50)
    assert {VOCAB["ĠJohn"], VOCAB["ĠRobert"]} <= names["boys_names"]
    assert VOCAB["ĠMary"] in names["girls_names"] and not names["girls_names"] & names["boys_names"]


def test_original_tsea_functions(tiny_lm):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("plotly")
    from sae_analysis.feature_statistics import get_W_U_W_dec_stats_df
    from sae_analysis.tsea import (
        get_enrichment_df,
        get_gene_set_from_regex,
        get_test_gene_sets,
        manhattan_plot_enrichment_scores,
    )
    from saekit.compat import hooked

    model = hooked(tiny_lm)
    W_dec = torch.randn(12, model.d_model, generator=torch.Generator().manual_seed(2))
    stats, projection = get_W_U_W_dec_stats_df(W_dec, model)
    assert list(stats.columns) == ["feature", "mean", "std", "skewness", "kurtosis"]
    assert projection.shape == (12, model.cfg.d_vocab)
    vocab = model.tokenizer.get_vocab()
    sets = {"space": get_gene_set_from_regex(vocab, r"Ġ.*"), **get_test_gene_sets(model)}
    sets = {k: v for k, v in sets.items() if k in ("space", "colors")}
    df = get_enrichment_df(projection, [0, 3, 5], sets)
    assert isinstance(df, pd.DataFrame) and list(df.columns) == [0, 3, 5]
    assert ((df.values >= 0) & (df.values <= 1)).all()
    fig = manhattan_plot_enrichment_scores(df, label_threshold=0, top_n=1)
    assert len(fig.layout.annotations) >= len(df.index)


def test_get_feature_data(tiny_lm):
    from sae_analysis.visualizer.data_fns import get_feature_data
    from saekit.compat import hooked
    from saekit.saes import SAE

    model = hooked(tiny_lm)
    torch.manual_seed(0)
    sae = SAE.create("relu", d_in=model.d_model, d_sae=32, metadata={"hook_name": "blocks.1.hook_resid_pre"})
    tokens = model.to_tokens(["the quick brown fox jumps over the lazy dog"] * 3)
    data = get_feature_data(sae, model, "blocks.1.hook_resid_pre", 1, tokens=tokens,
                            feature_idx=[0, 5], max_batch_size=2, first_group_size=4)  # fmt: skip
    assert sorted(data) == [0, 5]
    page = data[5].get_all_html()
    assert page.startswith("<!DOCTYPE html>") and "Feature 5" in page
    acts = sae.encode(model.run_to_hooks(tokens, ["blocks.1.hook_resid_pre"])["blocks.1.hook_resid_pre"])
    fires = int((acts[:, 1:, 5] > 0).sum())  # BOS is not counted
    assert data[5].summary["fire_count"] == fires
