"""Feature absorption: SAEBench's per-word cases by hand, feature splits, prompts and probes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saekit.evals.absorption import _summarise, split_features, train_l1_probe, word_absorption
from saekit.evals.first_letter import (
    FirstLetterData,
    alpha_vocab,
    build_prompt,
    f1_score,
    letter_f1,
    make_prompts,
    word_token_positions,
)

COS = torch.tensor([0.9, 0.5, 0.05, 0.3, -0.2])  # cos(probe, W_dec[i]); feature 0 is "main"


@pytest.mark.parametrize(
    ("acts", "act_proj", "fraction", "full"),
    [
        # the main feature covers the probe projection (1.8 >= 1.5): no absorption
        ([2.0, 0, 0, 0, 0], 1.5, 0.0, False),
        # main silent, feature 1 projects 2 * 0.5 = 1.0 >= 0.4 * 1.2: fully absorbed
        ([0, 2.0, 0, 0, 0], 1.2, 1.0, True),
        # partial: main 0.45, absorbers 0.5 + 0.6 = 1.1 capped at 1.5 - 0.45 = 1.05
        ([0.5, 1.0, 0, 2.0, 0], 1.5, 1.05 / 1.5, False),
        # absorbers project 0.2 < 0.4 * 1.5: no absorption
        ([0.5, 0.4, 0, 0, 0], 1.5, 0.0, False),
        # feature 2 (cos 0.05) is too weakly aligned for the fraction (>= 0.1) but not for
        # full absorption (>= 0.025): 20 * 0.05 = 1.0 >= 0.4 * 1.5
        ([0, 0, 20.0, 0, 0], 1.5, 0.0, True),
        # a negative probe projection is never absorption
        ([0, 2.0, 0, 0, 0], -1.0, 0.0, False),
    ],
)
def test_word_absorption_cases(acts, act_proj, fraction, full):
    got_fraction, got_full = word_absorption(act_proj, torch.tensor(acts), COS, [0])
    assert got_fraction == pytest.approx(fraction)
    assert got_full is full


def test_absorption_fraction_counts_at_most_three_absorbers():
    cos = torch.tensor([0.9, 0.5, 0.5, 0.5, 0.5])
    acts = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.4])  # projections 0.9 | 0.5 0.5 0.5 0.2
    fraction, full = word_absorption(3.0, acts, cos, [0])
    assert fraction == pytest.approx(1.5 / (1.5 + 0.9))  # not (1.7 / 2.6) with four
    assert full is False


def test_split_features_grow_while_f1_jumps():
    feats = [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]]
    assert split_features([0.5, 0.52, 0.9, 0.95], feats) == [1]  # 0.52 is no jump: stop
    assert split_features([0.5, 0.6, 0.65, 0.66], feats) == [1, 2, 3]
    assert split_features([0.0, 0.0, 0.0, 0.0], feats) == [1]


def test_summary_averages_only_qualifying_letters():
    details = [
        {"first_letter": "a", "mean_absorption_fraction": 0.2, "full_absorption_rate": 0.1,
         "num_split_features": 1, "qualifies": True},
        {"first_letter": "b", "mean_absorption_fraction": 0.4, "full_absorption_rate": 0.3,
         "num_split_features": 3, "qualifies": True},
        {"first_letter": "c", "mean_absorption_fraction": 0.9, "full_absorption_rate": 0.9,
         "num_split_features": 9, "qualifies": False},
    ]  # fmt: skip
    out = _summarise(details, min_letters=20)
    mean = out["eval_result_metrics"]["mean"]
    assert mean["mean_absorption_fraction_score"] == pytest.approx(0.3)
    assert mean["mean_full_absorption_score"] == pytest.approx(0.2)
    assert mean["mean_num_split_features"] == pytest.approx(2.0)
    assert mean["std_dev_absorption_fraction_score"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert out["letters_qualifying"] == ["a", "b"] and out["saebench_would_report"] is False
    # sample SD of (0.2, 0.4) is 0.1414; over sqrt(2) letters: 0.1
    assert out["standard_errors"]["mean_absorption_fraction_score"] == pytest.approx(0.1)
    assert out["standard_errors"]["mean_num_split_features"] == pytest.approx(1.0)


def test_prompt_matches_saebench_template_and_positions(tiny_lm):
    text, ends = build_prompt([" cat"], [" apple", "Bob"])
    assert (
        text
        == "\n apple has the first letter: A\nBob has the first letter: B\n cat has the first letter:"
    )
    packed, ends2 = build_prompt([" cat", "dog"], ["Bob"])
    assert packed.endswith("\n cat has the first letter: C\ndog has the first letter:")
    tok = tiny_lm.tokenizer
    for prompt, word_ends, words in ((text, ends, [" cat"]), (packed, ends2, [" cat", "dog"])):
        ids, positions = word_token_positions(tok, prompt, word_ends)
        for pos, word in zip(positions, words, strict=True):
            assert tok.decode(ids[: pos + 1]).endswith(word)
            assert " has".startswith(tok.decode(ids[pos + 1 : pos + 2]))


def test_make_prompts_cover_each_word_once_without_contamination():
    words = [f"w{i}" for i in range(30)]
    import random

    prompts = make_prompts(words, n_icl=4, words_per_prompt=3, rng=random.Random(0))
    seen = [w for _, _, queries in prompts for w in queries]
    assert sorted(seen) == sorted(words)
    for text, _, queries in prompts:
        lines = text.split("\n")[1:]
        assert len(lines) == 4 + len(queries)
        assert [line.split(" has")[0] for line in lines[4:]] == queries
        assert not {line.split(" has")[0] for line in lines[:4]} & set(queries)


def test_alpha_vocab_keeps_letter_tokens(tiny_lm):
    vocab = alpha_vocab(tiny_lm.tokenizer)
    assert vocab and all(w.strip().isalpha() and w.strip().isascii() for w in vocab)
    assert all(w == w.strip() or (w.startswith(" ") and w[1:] == w.strip()) for w in vocab)


def test_f1_and_letter_f1_against_hand_counts():
    y = np.array([True, True, False, False, True])
    pred = np.array([True, False, True, False, True])
    assert f1_score(y, pred) == pytest.approx(2 * 2 / (3 + 3))
    scores = torch.full((3, 26), -1.0)
    scores[0, 0] = scores[1, 0] = scores[2, 1] = 1.0
    f1 = letter_f1(scores, np.array([0, 1, 1]))
    assert f1[0] == pytest.approx(2 / 3) and f1[1] == pytest.approx(2 / 3) and f1[2] == 0.0


def test_l1_probe_ranks_the_feature_that_carries_the_letter():
    rng = np.random.default_rng(0)
    letters = rng.integers(0, 26, 600)
    feats = torch.from_numpy(rng.exponential(0.3, size=(600, 40))).float()
    feats[:, 7] = torch.from_numpy((letters == 3) * 2.0).float()  # feature 7 fires for "d"
    weights_LF = train_l1_probe(feats, letters)
    assert int(weights_LF[3].argmax()) == 7


def test_sae_absorption_end_to_end_on_a_built_sae():
    """A 2-d residual where the letter "a" has a main feature, and one word is absorbed."""
    from saekit.evals.absorption import sae_absorption
    from saekit.evals.first_letter import LetterProbe
    from saekit.saes import SAE

    sae = SAE.create("relu", d_in=2, d_sae=3)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        sae.b_enc.copy_(torch.tensor([-0.5, 0.0, 0.0]))  # f0 = relu(x - 0.5): the main one
        sae.b_dec.zero_()
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]))
    train_words = ["apple", "ant", "bee", "cat"] * 10
    train = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]] * 10)
    test_words = ["art", "axe", "bat", "cow"]
    test = torch.tensor([[1.0, 0.0], [0.3, 1.0], [-1.0, 0.0], [-1.0, 0.0]])
    data = FirstLetterData(train_words, test_words, train, test)
    W, b = torch.zeros(26, 2), torch.full((26,), -0.1)
    W[0, 0] = 1.0  # the ground-truth probe for "a" reads x
    out = sae_absorption(sae, data, LetterProbe(W, b), max_k=1, min_letters=1)
    a = out["eval_result_details"][0]
    assert a["first_letter"] == "a" and a["split_feats"] == [0]
    assert a["num_probe_true_positives"] == 2 and a["qualifies"]
    # "art": main projects 0.5 < a.p = 1, but no other feature fires: fraction 0.
    # "axe": a.p = 0.3, main silent, feature 1 projects 1.0 * cos 0.6 = 0.6: fraction 1, full.
    assert a["mean_absorption_fraction"] == pytest.approx(0.5)
    assert a["full_absorption_rate"] == pytest.approx(0.5) and a["num_full_absorption"] == 1
    assert out["letters_qualifying"] == ["a"]
    assert out["eval_result_metrics"]["mean"]["mean_absorption_fraction_score"] == pytest.approx(
        0.5
    )


@pytest.mark.integration
def test_first_letter_prompts_on_the_default_model(default_lm):
    """The word's last token is found with the real tokenizer; activations come back per word."""
    from saekit.evals.first_letter import collect_first_letter

    tok = default_lm.tokenizer
    words = [" cat", "Bob", " understanding", "zz"]
    text, ends = build_prompt(words[1:], words[:1])
    ids, positions = word_token_positions(tok, text, ends)
    for pos, word in zip(positions, words[1:], strict=True):
        assert tok.decode(ids[: pos + 1]).endswith(word)
        assert tok.decode(ids[pos + 1 : pos + 2]) == " has"
    data = collect_first_letter(default_lm, "blocks.2.hook_resid_pre", n_words=40, n_icl=4)
    assert data.train_acts_ND.shape == (32, default_lm.d_model)
    assert data.test_acts_MD.shape == (8, default_lm.d_model)
    assert torch.isfinite(data.train_acts_ND).all()
