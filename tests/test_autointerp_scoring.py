"""Autointerp metrics, prompt builders and answer parsing, against hand-computed values."""

from __future__ import annotations

import math
import random
import re

import pytest

from saekit.autointerp.clients import Completion, TokenLogprobs
from saekit.autointerp.exampleset import FeatureExamples, Window
from saekit.autointerp.explain import (
    format_explain_examples,
    highlight,
    marked,
    parse_explanation,
)
from saekit.autointerp.metrics import classification_metrics, roc_auc
from saekit.autointerp.prompts import fill, load_templates, parse_template
from saekit.autointerp.score import (
    answer_probabilities,
    classifier_messages,
    fuzz_marks,
    fuzzing_samples,
    n_incorrect,
    parse_predictions,
    scorer_samples,
)

# ------------------------------------------------------------------ metrics


def test_metrics_by_hand():
    truth = [True, True, True, False, False, False, False, True]
    preds = [1, 1, 0, 1, 0, 0, None, None]  # two unparsable answers are left out
    m = classification_metrics(truth, preds)
    # valid: T T T F F F -> tp=2 fn=1 fp=1 tn=2
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 2)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["n"] == 8 and m["n_failed"] == 2 and m["auc"] is None


def test_metrics_unbalanced_and_degenerate():
    m = classification_metrics([True, True, False, False], [1, 1, 1, 1])
    assert m["balanced_accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 1.0
    assert m["f1"] == pytest.approx(2 / 3)
    m = classification_metrics([True, False], [0, 0])
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["balanced_accuracy"] == 0.5
    m = classification_metrics([True, False], [None, None])
    assert m["balanced_accuracy"] == 0.0 and m["n_failed"] == 2  # delphi: missing class -> 0


def test_auc_by_hand():
    # positives 0.9, 0.4; negatives 0.4, 0.1 -> pairs: (0.9>0.4) (0.9>0.1) (0.4=0.4) (0.4>0.1)
    assert roc_auc([True, True, False, False], [0.9, 0.4, 0.4, 0.1]) == pytest.approx(3.5 / 4)
    assert roc_auc([True, True], [0.1, 0.2]) is None
    m = classification_metrics(
        [True, True, False, False], [1, 0, 0, 0], [0.9, 0.4, 0.4, None]
    )  # the None probability is left out: pairs (0.9>0.4) (0.4=0.4)
    assert m["auc"] == pytest.approx(1.5 / 2)


# ------------------------------------------------------------------ prompts


def test_templates_parse_and_fill(tmp_path):
    msgs = parse_template("# note\n=== system ===\nsys {n}\n=== user ===\nA {examples} {x}\n")
    assert msgs == [{"role": "system", "content": "sys {n}"},
                    {"role": "user", "content": "A {examples} {x}"}]  # fmt: skip
    out = fill(msgs, examples="has {n} inside", n=3)
    assert out[0]["content"] == "sys 3"
    assert out[1]["content"] == "A has {n} inside {x}"  # inserted text is not substituted
    with pytest.raises(ValueError, match="must end with"):
        parse_template("=== user ===\nhi\n=== assistant ===\nho\n")
    with pytest.raises(ValueError, match="before the first"):
        parse_template("stray\n=== user ===\nhi\n")
    shipped = load_templates()
    assert set(shipped) == {"explain", "detection", "fuzzing", "retry"}
    assert "{n}" in shipped["retry"][-1]["content"]
    assert "{examples}" in shipped["explain"][-1]["content"]
    (tmp_path / "fuzzing.txt").write_text("=== user ===\nmine {explanation}\n")
    mine = load_templates(tmp_path)
    assert mine["fuzzing"] == [{"role": "user", "content": "mine {explanation}"}]
    assert mine["detection"] == shipped["detection"]
    with pytest.raises(FileNotFoundError, match="--prompts"):
        load_templates(tmp_path / "nope")


def _w(id, acts, tokens=None, centre=0, kind="quantile"):
    tokens = tokens or [f"t{i}" for i in range(len(acts))]
    return Window(id=id, kind=kind, tokens=tokens, acts=acts, centre=centre)


def test_marked_tokens_are_exactly_those_at_or_above_threshold():
    acts = [0.0, 0.29, 0.3, 1.0, 0.5, 0.0, 0.31]
    assert marked(acts) == [False, False, True, True, True, False, True]
    assert marked([0.0, 0.0]) == [False, False]  # nothing fires: nothing marked
    toks = ["a", " b", " c", " d", " e", " f", "\ng"]
    assert highlight(toks, marked(acts)) == "a b<< c d e>> f<<\\ng>>"
    text = format_explain_examples([_w("top0", acts, toks, 3, "top")], feature_max=2.0)
    # strengths: ceil(10 * act / 2): 0.3 -> 2, 1.0 -> 5, 0.5 -> 3, 0.31 -> 2
    assert text == "Excerpt 1: a b<< c d e>> f<<\\ng>>\nStrength: c 2, d 5, e 3, \\ng 2"


def test_fuzzing_marks_and_samples():
    act = [_w("q0.0", [0, 2.0, 0.5, 0, 0]), _w("q0.1", [1.0, 0, 0, 0, 0.4])]
    assert n_incorrect(act) == 2  # ceil((2 + 2) / 2)
    assert n_incorrect([_w("a", [1.0, 0, 0]), _w("b", [1.0, 1.0, 0])]) == 2  # ceil(1.5)
    quiet = _w("rand0", [0.0] * 6, centre=4, kind="random")
    marks = fuzz_marks(quiet, 3, random.Random(0))
    assert sum(marks) == 3 and marks[4]  # the example token is always among the wrong marks
    assert fuzz_marks(act[0], 3, random.Random(0)) == [False, True, False, False, False]
    fe = FeatureExamples(7, 2.0, 0.01, [], act, [quiet])
    samples = fuzzing_samples(fe, random.Random(0))
    assert [s.activating for s in samples] == [True, True, False]
    assert samples[0].text == "t0<<t1>>t2t3t4"  # 0.5 < 0.3 x 2.0 is not marked
    assert samples[1].text == "<<t0>>t1t2t3<<t4>>"
    inside = "".join(re.findall(r"<<(.*?)>>", samples[2].text))
    assert inside.count("t") == 2 and "t4" in inside  # 2 wrong marks, the example token first
    # the same samples in the same order whatever the explanation (seeded by feature)
    assert [s.text for s in scorer_samples("fuzzing", fe, 0)] == [
        s.text for s in scorer_samples("fuzzing", fe, 0)
    ]
    det = scorer_samples("detection", fe, 0)
    assert sorted(s.text for s in det) == sorted(["t0t1t2t3t4"] * 2 + ["t0t1t2t3t4t5"])
    with pytest.raises(ValueError, match="--scorers"):
        scorer_samples("simulation", fe, 0)


def test_classifier_prompt():
    tmpl = load_templates()["detection"]
    fe = FeatureExamples(1, 1.0, 0.1, [], [_w("q0.0", [1.0, 0])], [])
    msgs = classifier_messages(tmpl, "the letter t", scorer_samples("detection", fe, 0))
    last = msgs[-1]["content"]
    assert "Description of the neuron: the letter t" in last and "Excerpt 1: t0t1" in last
    assert "For each of the 1 excerpts" in last and "a list of 1 numbers" in last
    assert "{" not in last


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("[1, 0, 1]", 3, [1, 0, 1]),
        ("Sure! The answer is [0,1,1,0,0].", 5, [0, 1, 1, 0, 0]),
        ("['1', '0']", 2, [1, 0]),
        ("[Yes, no, YES]", 3, [1, 0, 1]),
        ("[true, false]", 2, [1, 0]),
        ("[3] is wrong; [1, 1]", 2, [1, 1]),  # the first bracket of the right length
        ("Excerpt 1: 1\nExcerpt 2: 0\nExcerpt 3: yes", 3, [1, 0, 1]),
        ("1 0 0 1", 4, [1, 0, 0, 1]),
    ],
)
def test_parse_predictions(text, n, expected):
    assert parse_predictions(text, n)[0] == expected


@pytest.mark.parametrize(
    "text, n", [("[1, 0]", 3), ("I cannot tell.", 2), ("[1, 2, 0]", 3), ("", 1)]
)
def test_parse_predictions_refuses(text, n):
    with pytest.raises(ValueError, match="expected"):
        parse_predictions(text, n)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Explanation: names of fruits", "names of fruits"),
        ("[EXPLANATION]: the word 'the'.", "the word 'the"),
        ('Sure.\n**Explanation:** "closing brackets"\n', "closing brackets"),
        ("Explanation:\nPython keywords", "Python keywords"),
        ("Strength: foo 10\nnumbers in code", "numbers in code"),
        (
            "Explanation:\n\nExcerpt 1:\n\nThe tokens in << >> have in common that they are dates",
            "dates",
        ),
        ("Explanation: Excerpt 1: The token 'x' is a name. More", "The token 'x' is a name"),
        ("Explanation: <<def>> keywords", "def keywords"),
        ("Explanation: the word if. Also: the word if. Also", "the word if"),
        ("Explanation: e.g. numbers", "e.g. numbers"),
        ("The tokens in << >> have in common that they are a summary.", "a summary"),
        ("The marked tokens share in common: dates", "dates"),
    ],
)
def test_parse_explanation(text, expected):
    assert parse_explanation(text) == expected


def test_parse_explanation_refuses_empty():
    with pytest.raises(ValueError, match="no explanation"):
        parse_explanation("Explanation: ...")
    with pytest.raises(ValueError, match="no explanation"):  # an echo of the excerpts
        parse_explanation("Excerpt\nStrength: object 10\nExcerpt")
    assert len(parse_explanation("Explanation: " + "word " * 100)) <= 200


def test_answer_probabilities_by_hand():
    ln = math.log
    toks = [
        TokenLogprobs("[", {"[": ln(0.9)}),
        TokenLogprobs("1", {"1": ln(0.6), "0": ln(0.2), " 1": ln(0.1)}),  # P1 .7, P0 .2
        TokenLogprobs(",", {",": ln(1.0)}),
        TokenLogprobs(" 0", {" 0": ln(0.5), "0": ln(0.25), "1": ln(0.25)}),  # P1 .25, P0 .75
        TokenLogprobs("]", {"]": ln(1.0)}),
    ]
    comp = Completion("[1, 0]", toks)
    values, span = parse_predictions(comp.text, 2)
    probs = answer_probabilities(comp, span, 2)
    assert values == [1, 0]
    assert probs == pytest.approx([0.7 / 0.9, 0.25 / 1.0])
    assert answer_probabilities(Completion("[1, 0]", None), span, 2) is None
    assert answer_probabilities(comp, span, 3) is None  # not aligned: no probabilities


def test_explainer_asks_for_the_answer_prefix():
    from saekit.autointerp.explain import ANSWER_PREFIX, explain

    seen = {}

    class Echo:
        name, concurrency = "echo", 1

        def complete(self, messages, *, max_tokens, prefix=None, **_):
            seen.update(prefix=prefix, max_tokens=max_tokens, prompt=messages[-1]["content"])
            return Completion(f"{prefix} the letter t\nExcerpt 2: junk")

    w = _w("top0", [0.0, 2.0], ["a", " t"], 1, "top")
    text, raw = explain(Echo(), load_templates()["explain"], [w], 2.0)
    assert text == "the letter t" and raw.startswith(ANSWER_PREFIX)
    assert seen["prefix"] == "Explanation:" and seen["prompt"].startswith(
        "Excerpt 1: a<< t>>\nStrength: t 10\n\nWhat do"
    )


def test_explainer_asks_again_without_prefix_when_empty():
    from saekit.autointerp.explain import explain

    prefixes = []

    class EmptyFirst:
        name, concurrency = "empty", 1

        def complete(self, messages, *, max_tokens, prefix=None, **_):
            prefixes.append(prefix)
            return Completion("Explanation:" if prefix else "capital letters")

    w = _w("top0", [0.0, 2.0], ["a", " T"], 1, "top")
    assert explain(EmptyFirst(), load_templates()["explain"], [w], 2.0)[0] == "capital letters"
    assert prefixes == ["Explanation:", None]
