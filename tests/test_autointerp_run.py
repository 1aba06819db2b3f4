"""The autointerp pipeline with a deterministic scripted LLM: scores by hand, cache, resume."""

from __future__ import annotations

import json
import re
import threading

import pytest
import torch

from saekit.autointerp.clients import CachedClient, Completion
from saekit.autointerp.examples import CollectedExamples, ExampleCollector
from saekit.autointerp.exampleset import ExampleSet
from saekit.autointerp.run import InterpSettings, run_autointerp, shuffled_sources

TRIGGER_ROWS, FILLER_ROWS, T = 12, 8, 32
SETTINGS = InterpSettings(n_explain=4, n_activating=4, n_random=4, n_quantiles=2, per_prompt=4)


@pytest.fixture(scope="module")
def example_set() -> ExampleSet:
    """3 features; feature k fires only on the word " wk" (token k). Trigger rows hold w0 w1 w2
    side by side at positions 10-12 (so every activating window shows all three words);
    filler rows hold none (so the random windows come from them)."""
    g = torch.Generator().manual_seed(0)
    rows = TRIGGER_ROWS + FILLER_ROWS
    ids_BT = torch.randint(3, 10, (rows, T), generator=g)
    acts_BTF = torch.zeros(rows, T, 3)
    for r in range(TRIGGER_ROWS):
        for k in range(3):
            ids_BT[r, 10 + k] = k
            acts_BTF[r, 10 + k, k] = 1.0 + 0.1 * r
    c = ExampleCollector([0, 1, 2], n_random=8, top_k=12, n_samples=12,
                         context_left=24, context_right=7)  # fmt: skip
    c.update(ids_BT, torch.ones(rows, T, dtype=torch.bool), acts_BTF)
    collected = CollectedExamples(c.result(), c.random_examples(), None, None, None)
    text = {i: f" w{i}" if i < 3 else f" f{i}" for i in range(10)}
    return ExampleSet(collected, text, {"sae": "synthetic"})


class Oracle:
    """Explains with the marked word; answers 1 where the excerpt fits the description."""

    name, concurrency = "oracle", 2

    def __init__(self, fail_after: int | None = None, garbage: bool = False) -> None:
        self.calls, self.fail_after, self.garbage = 0, fail_after, garbage
        self.lock = threading.Lock()

    def complete(self, messages, *, max_tokens, temperature=0.0, logprobs=False, **_) -> Completion:
        with self.lock:
            self.calls += 1
            if self.fail_after is not None and self.calls > self.fail_after:
                raise RuntimeError("killed")
        prompt = messages[-1]["content"]
        if self.garbage:
            return Completion("I am not sure what you mean.")
        if "Strength:" in prompt:
            return Completion(f"Explanation: the word {re.search(r'<<(.*?)>>', prompt)[1].strip()}")
        word = re.search(r"Description of the neuron: the word (\S+)", prompt)[1]
        answers = []
        for excerpt in re.findall(r"^Excerpt \d+: (.*)$", prompt, re.M):
            marks = re.findall(r"<<(.*?)>>", excerpt)
            fits = all(m.strip() == word for m in marks) if marks else word in excerpt.split()
            answers.append(int(fits))
        return Completion(json.dumps(answers))


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_scores_by_hand(example_set, tmp_path):
    client = CachedClient(Oracle(), tmp_path / "cache")
    summary = run_autointerp(example_set, client, tmp_path, settings=SETTINGS)
    results = {r["feature"]: r for r in _lines(tmp_path / "results.jsonl")}
    assert sorted(results) == [0, 1, 2]
    for k, r in results.items():
        assert r["explanation"] == f"the word w{k}"
        assert len(r["examples"]["explain"]) == 4 and len(r["examples"]["activating"]) == 4
        assert [i[:4] for i in r["examples"]["non_activating"]] == ["rand"] * 4
        for scorer in ("detection", "fuzzing"):  # the oracle is always right on real ones
            m = r["scores"][scorer]
            assert (m["tp"], m["tn"], m["fp"], m["fn"]) == (4, 4, 0, 0)
            assert m["balanced_accuracy"] == m["f1"] == m["precision"] == m["recall"] == 1.0
            assert m["auc"] is None  # the oracle gives no token probabilities
        other = r["shuffled"]["explanation_of"]
        assert other != k and r["shuffled"]["explanation"] == f"the word w{other}"
        # every activating window shows all three words: detection cannot tell them apart
        assert r["shuffled"]["detection"]["balanced_accuracy"] == 1.0
        # fuzzing: the marked word is wk, not w(other): every answer 0 -> tp 0, tn 4, fn 4
        fz = r["shuffled"]["fuzzing"]
        assert (fz["tp"], fz["tn"], fz["fp"], fz["fn"]) == (0, 4, 0, 4)
        assert fz["balanced_accuracy"] == 0.5 and fz["f1"] == 0.0 and fz["precision"] == 0.0
        assert len(r["answers"]["fuzzing"]) == 8
    assert sorted(r["shuffled"]["explanation_of"] for r in results.values()) == [0, 1, 2]
    assert summary["scores"]["fuzzing"]["balanced_accuracy"] == 1.0
    assert summary["shuffled"]["fuzzing"]["balanced_accuracy"] == 0.5
    assert summary["failed_answers"]["detection"] == {"failed": 0, "retried": 0, "total": 24}
    assert "auc_note" in summary
    # 3 explanations + 3 features x 2 scorers x 2 explanations x 2 prompts of 4
    assert client.counts()["llm_calls"] == 3 + 24 and client.counts()["cache_hits"] == 0
    assert (tmp_path / "scores.png").stat().st_size > 1000
    assert json.loads((tmp_path / "summary.json").read_text())["features"] == 3

    # a second run in a fresh folder with the same cache makes no LLM call
    again = CachedClient(Oracle(), tmp_path / "cache")
    run_autointerp(example_set, again, tmp_path / "second", settings=SETTINGS)
    assert again.counts()["llm_calls"] == 0 and again.counts()["cache_hits"] == 27
    second = {r["feature"]: r for r in _lines(tmp_path / "second" / "results.jsonl")}
    assert second == results


def test_resume_after_kill(example_set, tmp_path):
    with pytest.raises(RuntimeError, match="killed"):
        run_autointerp(example_set, CachedClient(Oracle(fail_after=10), tmp_path / "c"), tmp_path,
                       settings=SETTINGS)  # fmt: skip
    done_before = (
        len(_lines(tmp_path / "results.jsonl")) if (tmp_path / "results.jsonl").exists() else 0
    )
    assert done_before < 3
    resumed = CachedClient(Oracle(), tmp_path / "c")
    run_autointerp(example_set, resumed, tmp_path, settings=SETTINGS)
    # the 10 answers given before the kill are not asked again
    assert resumed.counts()["llm_calls"] == 27 - 10
    results = _lines(tmp_path / "results.jsonl")
    assert sorted(r["feature"] for r in results) == [0, 1, 2]  # each feature once
    idle = CachedClient(Oracle(fail_after=0), tmp_path / "c")
    run_autointerp(example_set, idle, tmp_path, settings=SETTINGS)  # all done: no call at all
    assert idle.counts() == {"llm_calls": 0, "cache_hits": 0, "prompt_tokens": 0,
                             "completion_tokens": 0}  # fmt: skip


def test_changed_settings_refused(example_set, tmp_path):
    run_autointerp(example_set, Oracle(), tmp_path, settings=SETTINGS, features=[0])
    other = InterpSettings(n_explain=3, n_activating=4, n_random=4, n_quantiles=2, per_prompt=4)
    with pytest.raises(ValueError, match="other settings"):
        run_autointerp(example_set, Oracle(), tmp_path, settings=other, features=[0])
    with pytest.raises(ValueError, match="not collected"):
        run_autointerp(example_set, Oracle(), tmp_path, settings=SETTINGS, features=[7])


def test_unparsable_answers_are_counted(example_set, tmp_path):
    summary = run_autointerp(example_set, Oracle(garbage=True), tmp_path, settings=SETTINGS)
    r = _lines(tmp_path / "results.jsonl")[0]
    assert r["explanation"] == "I am not sure what you mean"
    assert r["scores"]["detection"]["n_failed"] == r["scores"]["detection"]["n_retried"] == 8
    assert r["scores"]["detection"]["balanced_accuracy"] == 0.0
    assert summary["failed_answers"]["fuzzing"] == {"failed": 24, "retried": 24, "total": 24}


class Sloppy(Oracle):
    """Answers a scorer in prose first; asked again (the retry template), answers right."""

    def complete(self, messages, **kw) -> Completion:
        if "Strength:" in messages[-1]["content"]:
            return super().complete(messages, **kw)
        if "Description of the neuron" in messages[-1]["content"]:
            with self.lock:
                self.calls += 1
            return Completion("I think the first one, maybe.")
        assert messages[-2] == {"role": "assistant", "content": "I think the first one, maybe."}
        assert messages[-1]["content"].startswith("Answer with only a list of 4 numbers")
        return super().complete(messages[:-2], **kw)


def test_unparsable_answer_is_asked_once_more(example_set, tmp_path):
    client = CachedClient(Sloppy(), tmp_path / "cache")
    summary = run_autointerp(example_set, client, tmp_path / "a", settings=SETTINGS)
    reference = run_autointerp(example_set, Oracle(), tmp_path / "b", settings=SETTINGS)
    for scorer in ("detection", "fuzzing"):
        assert summary["failed_answers"][scorer] == {"failed": 0, "retried": 24, "total": 24}
        assert summary["scores"][scorer] == reference["scores"][scorer]
        assert summary["shuffled"][scorer] == reference["shuffled"][scorer]
    assert client.counts()["llm_calls"] == 3 + 2 * 24  # each scorer prompt asked twice


def test_shuffled_sources_is_a_derangement():
    for n in range(2, 9):
        src = shuffled_sources(list(range(n)), seed=n)
        assert sorted(src) == list(range(n)) and sorted(src.values()) == list(range(n))
        assert all(k != v for k, v in src.items())
    assert shuffled_sources([5], 0) == {}


def test_dashboard_shows_explanations(example_set, tiny_lm, tmp_path):
    from saekit.analysis.dashboard import write_dashboard
    from saekit.autointerp.run import read_results

    run_autointerp(example_set, Oracle(), tmp_path / "interp", settings=SETTINGS)
    interp = read_results(tmp_path / "interp")
    stats = example_set.collected.stats
    index = write_dashboard(tmp_path / "dash", stats, [], tiny_lm.tokenizer, interp=interp)
    page = index.read_text()
    assert 'id="search"' in page and "search explanations" in page
    assert '<td class="expl">the word w1 <span class=sub>(detection 1.00, fuzzing 1.00)' in page
    feature = (tmp_path / "dash" / "feature_2.html").read_text()
    assert "<b>Explanation:</b> the word w2" in feature and "fuzzing (shuffled) 0.50" in feature
    summary = json.loads((tmp_path / "dash" / "features.json").read_text())
    assert summary[0]["explanation"] == "the word w0"
    assert summary[0]["interp_scores"]["fuzzing (shuffled)"] == 0.5
    plain = write_dashboard(tmp_path / "plain", stats, [], tiny_lm.tokenizer).read_text()
    assert 'id="search"' not in plain and 'td class="expl"' not in plain


def test_load_explanations(example_set, tmp_path):
    """One loader for every reader: a finished run, a run in progress, either file."""
    from saekit.autointerp import load_explanations

    run_autointerp(example_set, Oracle(), tmp_path, settings=SETTINGS)
    lines = {r["feature"]: r for r in _lines(tmp_path / "results.jsonl")}
    assert load_explanations(tmp_path) == lines == load_explanations(tmp_path / "results.jsonl")
    only = load_explanations(tmp_path / "explanations.jsonl")
    assert list(only) == [0, 1, 2]
    for f, rec in only.items():
        assert rec == {"feature": f, "explanation": f"the word w{f}",
                       "examples": {"explain": lines[f]["examples"]["explain"]}}  # fmt: skip
    # a run in progress: feature 2 explained, not yet scored; a line cut short by the kill
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "explanations.jsonl").write_text((tmp_path / "explanations.jsonl").read_text())
    done = [json.dumps(lines[f]) for f in (0, 1)]
    (partial / "results.jsonl").write_text("\n".join(done) + '\n{"feature": 2, "expl')
    got = load_explanations(partial)
    assert got[0] == lines[0] and got[1] == lines[1] and got[2] == only[2]
    assert "scores" not in got[2]
    with pytest.raises(FileNotFoundError, match="saekit explain"):
        load_explanations(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="results.jsonl"):
        load_explanations(tmp_path / "empty")
