"""Packing documents into context windows: BOS, separators, keep mask, batches, resume."""

from __future__ import annotations

import itertools

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from conftest import make_tiny_tokenizer
from saekit.data import TokenWindows, iter_documents, iter_token_batches

VOCAB = {"<eos>": 0, "<s>": 1, "<pad>": 2, "a": 3, "b": 4, "c": 5, "d": 6, "e": 7}


@pytest.fixture(scope="module")
def word_tokenizer():
    """One id per word, so every window below can be worked out by hand."""
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<eos>", pad_token="<pad>"
    )


def _rows(windows):
    return [(ids.tolist(), mask.tolist()) for ids, mask in windows]


def test_packing_with_bos_and_eos_separators(word_tokenizer):
    # stream: a b c <eos> d e <eos> a <eos> -> 3 tokens per window after BOS
    windows = TokenWindows(["a b c", "d e", "a"], word_tokenizer, 4)
    T, F = True, False
    assert _rows(windows) == [
        ([1, 3, 4, 5], [F, T, T, T]),
        ([1, 0, 6, 7], [F, F, T, T]),
        ([1, 0, 3, 0], [F, F, T, F]),
    ]


def test_packing_without_bos_drops_the_partial_tail_and_keeps_all(word_tokenizer):
    windows = TokenWindows(
        ["a b c", "d e", "a"], word_tokenizer, 4, prepend_bos=False, exclude_special_tokens=False
    )
    assert _rows(windows) == [([3, 4, 5, 0], [True] * 4), ([6, 7, 0, 3], [True] * 4)]


def test_pretokenized_documents_mix_with_text(word_tokenizer):
    windows = TokenWindows([[7, 7], "b"], word_tokenizer, 3)
    assert [ids for ids, _ in _rows(windows)] == [[1, 7, 7], [1, 0, 4]]


def test_iter_token_batches_stacks_rows(word_tokenizer):
    windows = TokenWindows(["a b c d e a b c d e a"], word_tokenizer, 3)
    batches = list(iter_token_batches(windows, 2))
    assert [b[0].shape for b in batches] == [(2, 3), (2, 3), (2, 3)]
    assert batches[0][0].tolist() == [[1, 3, 4], [1, 5, 6]]
    assert batches[0][1].dtype == torch.bool


def test_windows_match_a_plain_reference_on_real_text():
    tok = make_tiny_tokenizer()
    docs = list(itertools.islice(iter_documents("builtin:python-docs"), 150))  # > 2 chunks
    stream = [t for d in docs for t in tok(d, add_special_tokens=False)["input_ids"] + [0]]
    expected = [[1, *stream[i : i + 31]] for i in range(0, len(stream) - 30, 31)]
    got = [ids.tolist() for ids, _ in TokenWindows(docs, tok, 32)]
    assert got == expected


def test_resume_yields_exactly_the_next_windows():
    tok = make_tiny_tokenizer()
    n = 400

    def fresh():
        return TokenWindows(iter_documents("builtin:python-docs"), tok, 64)

    full = [ids.tolist() for ids, _ in itertools.islice(fresh(), n)]
    first = fresh()
    head = [ids.tolist() for ids, _ in itertools.islice(first, 123)]
    state = first.state_dict()
    assert state["windows_done"] == 123
    resumed = fresh()
    resumed.load_state_dict(state)
    tail = [ids.tolist() for ids, _ in itertools.islice(resumed, n - 123)]
    assert head + tail == full


def test_errors(word_tokenizer):
    with pytest.raises(ValueError, match="context_size"):
        TokenWindows(["a"], word_tokenizer, 1)
    no_bos = PreTrainedTokenizerFast(tokenizer_object=word_tokenizer.backend_tokenizer)
    with pytest.raises(ValueError, match="no BOS"):
        TokenWindows(["a"], no_bos, 4)
    one_shot = TokenWindows(iter(["a b c d e"]), word_tokenizer, 3)
    next(one_shot)
    with pytest.raises(ValueError, match="one-shot"):
        one_shot.load_state_dict(one_shot.state_dict())
