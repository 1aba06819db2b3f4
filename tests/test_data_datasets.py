"""Dataset specs -> documents: every spec kind, the holdout split, and the errors."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys

import datasets
import pytest

from saekit.data import DatasetError, iter_documents, python_docs

ROWS = ["first document", "second document", "third one", "fourth", "fifth text"]


def _write_jsonl(path, rows, key="text"):
    path.write_text("".join(json.dumps({key: r}) + "\n" for r in rows))


def test_txt_is_split_into_blank_line_paragraphs(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("para one line 1\npara one line 2\n\npara two\n\n\npara three\n")
    docs = list(iter_documents(str(f)))
    assert [d.strip() for d in docs] == [
        "para one line 1\npara one line 2",
        "para two",
        "para three",
    ]


def test_jsonl_json_parquet_give_rows_in_order(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "b.json").write_text(json.dumps([{"text": r} for r in ROWS]))
    datasets.Dataset.from_dict({"text": ROWS}).to_parquet(str(tmp_path / "c.parquet"))
    for name in ["a.jsonl", "b.json", "c.parquet"]:
        assert list(iter_documents(str(tmp_path / name))) == ROWS, name


def test_text_column_and_missing_column(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", ROWS, key="content")
    assert list(iter_documents(str(tmp_path / "a.jsonl"), text_column="content")) == ROWS
    with pytest.raises(DatasetError, match=r"no 'text' or 'input_ids' column.*content"):
        list(iter_documents(str(tmp_path / "a.jsonl")))


def test_folder_reads_supported_files_in_sorted_order(tmp_path):
    (tmp_path / "sub").mkdir()
    _write_jsonl(tmp_path / "sub" / "b.jsonl", ["from b"])
    (tmp_path / "a.txt").write_text("from a")
    (tmp_path / "notes.md").write_text("ignored")
    assert [d.strip() for d in iter_documents(str(tmp_path))] == ["from a", "from b"]


def test_saved_dataset_and_dataset_dict(tmp_path):
    datasets.Dataset.from_dict({"text": ROWS}).save_to_disk(str(tmp_path / "ds"))
    assert list(iter_documents(str(tmp_path / "ds"))) == ROWS
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": ROWS[:2]}),
        validation=datasets.Dataset.from_dict({"text": ROWS[2:]}),
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert list(iter_documents(str(tmp_path / "dd"), split="validation")) == ROWS[2:]
    with pytest.raises(DatasetError, match="no split 'test'"):
        iter_documents(str(tmp_path / "dd"), split="test")


def test_pretokenized_input_ids_are_yielded_as_lists(tmp_path):
    ids = [[5, 6, 7], [8], [9, 10]]
    datasets.Dataset.from_dict({"input_ids": ids}).save_to_disk(str(tmp_path / "tok"))
    assert list(iter_documents(str(tmp_path / "tok"))) == ids
    datasets.Dataset.from_dict({"input_ids": ids}).to_parquet(str(tmp_path / "tok.parquet"))
    assert list(iter_documents(str(tmp_path / "tok.parquet"))) == ids


def test_hub_path_streams_through_load_dataset(tmp_path):
    # The hub is offline: `hf:` sends a local data folder through the same
    # `datasets.load_dataset(..., streaming=True)` call a hub id takes.
    (tmp_path / "data").mkdir()
    _write_jsonl(tmp_path / "data" / "train.jsonl", ROWS)
    _write_jsonl(tmp_path / "data" / "test.jsonl", ["held out"])
    assert list(iter_documents(f"hf:{tmp_path}")) == ROWS
    assert list(iter_documents(f"hf:{tmp_path}", split="test")) == ["held out"]


def test_holdout_every_nth_document(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", ROWS)
    train = list(iter_documents(str(tmp_path / "a.jsonl"), holdout_every=2))
    held = list(iter_documents(str(tmp_path / "a.jsonl"), holdout_every=2, holdout=True))
    assert train == [ROWS[0], ROWS[2], ROWS[4]]
    assert held == [ROWS[1], ROWS[3]]
    with pytest.raises(ValueError, match="holdout_every"):
        iter_documents(str(tmp_path / "a.jsonl"), holdout=True)


def test_python_docs_is_real_text_and_deterministic():
    from pydoc_data.topics import topics

    first = list(itertools.islice(python_docs(), len(topics) + 30))
    assert first[: len(topics)] == [topics[k] for k in sorted(topics)]
    docstrings = first[len(topics) :]
    assert all(isinstance(d, str) and len(d) > 200 for d in docstrings)
    assert first == list(itertools.islice(iter_documents("builtin:python-docs"), len(first)))


def test_empty_and_unreadable_data_name_the_path(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank.jsonl"
    _write_jsonl(blank, ["", "  "])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    for path in [empty, blank, bad]:
        with pytest.raises(DatasetError, match=str(path)):
            list(iter_documents(str(path)))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetError, match="nothing"):
        iter_documents(str(tmp_path / "nothing"))
    with pytest.raises(DatasetError, match="does not exist"):
        iter_documents(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DatasetError, match="unknown builtin"):
        iter_documents("builtin:nope")


def test_python_docs_order_is_the_same_in_another_process():
    # load datasets.py alone (no torch import), so the two extra interpreters start fast
    import saekit.data.datasets as module

    code = (
        "import hashlib, importlib.util, itertools, sys; "
        "spec = importlib.util.spec_from_file_location('d', sys.argv[1]); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "docs = itertools.islice(m.python_docs(), 400); "
        "print(hashlib.sha256('\\0'.join(docs).encode()).hexdigest())"
    )
    here = hashlib.sha256("\0".join(itertools.islice(python_docs(), 400)).encode()).hexdigest()
    for seed in ["1", "2"]:
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, module.__file__], capture_output=True, text=True, env=env
        )
        assert out.stdout.strip() == here, out.stderr


def test_local_files_never_go_through_load_dataset_and_are_read_once(tmp_path, monkeypatch):
    """Offline, `load_dataset` on a local file asked the hub at every epoch (and hung)."""
    from saekit.data import datasets as ds

    def refuse(*args, **kwargs):
        raise AssertionError("a local file must not go through datasets.load_dataset")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    _write_jsonl(tmp_path / "a.jsonl", ROWS)
    reads = []
    real = ds._read_rows
    monkeypatch.setattr(ds, "_read_rows", lambda path: reads.append(path) or real(path))
    for _epoch in range(3):
        assert list(iter_documents(str(tmp_path / "a.jsonl"))) == ROWS
    assert len(reads) == 1
    _write_jsonl(tmp_path / "a.jsonl", ROWS[:2])  # changed on disk: read again
    os.utime(tmp_path / "a.jsonl", ns=(1, 1))
    assert list(iter_documents(str(tmp_path / "a.jsonl"))) == ROWS[:2] and len(reads) == 2


def test_builtin_dataset_refuses_a_text_column():
    with pytest.raises(DatasetError, match="plain text with no columns; drop --text-column 'body'"):
        next(iter_documents("builtin:python-docs", text_column="body"))


def test_pretokenised_ids_outside_the_vocabulary_are_named(tiny_lm, tmp_path):
    from saekit.data import TokenWindows

    vocab = len(tiny_lm.tokenizer)
    windows = TokenWindows([[1, 2, 3] * 10, [4, vocab + 5]], tiny_lm.tokenizer, 8)
    with pytest.raises(DatasetError, match=rf"token id {vocab + 5}, outside the tokenizer's vocabulary"):
        list(windows)


def test_a_context_beyond_the_model_is_refused(tiny_lm):
    import torch

    from saekit.data import ActivationSource, TokenWindows

    limit = tiny_lm.max_context
    with pytest.raises(ValueError, match=rf"context {limit + 1} is longer than .* maximum of {limit}"):
        ActivationSource(tiny_lm, ["blocks.0.hook_resid_pre"], TokenWindows([], tiny_lm.tokenizer, limit + 1))
    with pytest.raises(ValueError, match=f"use --context {limit} or less"):
        tiny_lm.logits(torch.zeros(1, limit + 1, dtype=torch.long))
