"""Labelled data for probing: fortune parsing, class-balanced splits, JSONL, sources."""

from __future__ import annotations

import json

import pytest

from saekit.evals import labelled, labelled_sources
from saekit.evals.labelled import load_labelled, read_jsonl_rows, split_by_class


def test_parse_fortunes_splits_on_percent_lines_and_drops_short_entries():
    text = "First fortune,\nover two lines.\n%\nok\n%\n  Third one is long enough.  \n%\n"
    assert labelled_sources.parse_fortunes(text, min_chars=5) == [
        "First fortune,\nover two lines.",
        "Third one is long enough.",
    ]


def test_split_by_class_is_deterministic_disjoint_and_drops_small_classes():
    rows = [(f"a{i}", "a") for i in range(12)] + [(f"b{i}", "b") for i in range(10)]
    rows += [("a0", "a")] * 5 + [(f"c{i}", "c") for i in range(3)]  # duplicates count once
    data = split_by_class("toy", rows, 6, 4, seed=7)
    assert data.classes == ["a", "b"] and data.dropped_classes == {"c": 3}
    for c in data.classes:
        assert len(data.train[c]) == 6 and len(data.test[c]) == 4
        assert not set(data.train[c]) & set(data.test[c])
    again = split_by_class("toy", list(reversed(rows)), 6, 4, seed=7)
    assert again.train == data.train and again.test == data.test  # the rows' order is irrelevant
    other = split_by_class("toy", rows, 6, 4, seed=8)
    assert other.train != data.train
    texts, splits, labels = data.texts()
    assert len(texts) == 20 and splits.count("test") == 8 and labels.count("b") == 10
    with pytest.raises(ValueError, match="fewer than two classes have 30 texts"):
        split_by_class("toy", rows, 20, 10)


def test_jsonl_rows_and_load_labelled_errors(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"text": f"text {i}", "label": i % 2} for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert list(read_jsonl_rows(path))[:2] == [("text 0", "0"), ("text 1", "1")]
    data = load_labelled(str(path), 6, 4)
    assert data.name == "mine" and data.classes == ["0", "1"]
    (tmp_path / "bad.jsonl").write_text('{"text": "no label"}\n')
    with pytest.raises(ValueError, match="needs 'text' and 'label'"):
        load_labelled(str(tmp_path / "bad.jsonl"))
    with pytest.raises(ValueError, match="does not exist"):
        load_labelled(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="unknown labelled dataset 'nope'.*fortunes-topic"):
        load_labelled("nope")


def test_builtins_are_prepared_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEKIT_CACHE", str(tmp_path))
    calls = []

    def rows():
        calls.append(1)
        return iter([(f"doc {i}", "x" if i % 2 else "y") for i in range(10)])

    monkeypatch.setitem(labelled_sources.BUILTIN_SOURCES, "toy-builtin", rows)
    first = load_labelled("builtin:toy-builtin", 3, 2)
    second = load_labelled("toy-builtin", 3, 2)
    assert calls == [1] and first.train == second.train
    assert labelled.prepared_path("toy-builtin").is_file()


def test_missing_debian_packages_name_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(labelled_sources, "SYSTEM_FORTUNES", tmp_path / "none")
    monkeypatch.setattr(labelled_sources.shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="apt-get install -y fortunes-ga"):
        labelled_sources.fortunes_root(["fortunes-ga"])


def test_fortunes_root_uses_an_unpacked_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(labelled_sources, "SYSTEM_FORTUNES", tmp_path / "none")
    root = tmp_path / "evals/debian/usr/share/games/fortunes"
    (root / "ga").mkdir(parents=True)
    (root / "ga/proverbs").write_text("Is fada an la nach dtagann an taoide.\n%\n")
    assert labelled_sources.fortunes_root(["fortunes-ga"]) == root


def test_code_snippets_skip_the_header_like_saebench():
    assert labelled_sources.code_snippet("x" * 500) is None
    text = "#" * 150 + "y" * 400
    assert labelled_sources.code_snippet(text) == "y" * 400


def test_hub_rows_map_saebench_datasets(monkeypatch):
    import datasets

    fake = [{"text": f"news {i}", "label": i % 5} for i in range(20)]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: iter(fake))
    rows = list(labelled_sources.hub_rows("fancyzhx/ag_news", max_rows_per_class=2))
    assert rows == [("news 0", "0"), ("news 1", "1"), ("news 2", "2"), ("news 3", "3"),
                    ("news 5", "0"), ("news 6", "1"), ("news 7", "2"), ("news 8", "3")]  # fmt: skip


@pytest.mark.skipif(
    not (labelled_sources.SYSTEM_FORTUNES / "art").exists(),
    reason="Debian's fortunes package is not installed (apt-get install fortunes fortunes-min)",
)
def test_real_fortunes_topic_rows():
    counts: dict[str, int] = {}
    for text, label in labelled_sources.fortunes_topic_rows():
        assert len(text) >= labelled_sources.MIN_CHARS
        counts[label] = counts.get(label, 0) + 1
    assert set(counts) == set(labelled_sources.TOPIC_CLASSES)
    assert min(counts.values()) >= 140
