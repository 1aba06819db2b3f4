"""Pack documents into fixed-length context windows of token ids.

The documents are concatenated into one token stream, each document followed by the
tokenizer's EOS token (its BOS token if it has no EOS). The stream is cut into windows of
``context_size`` tokens; with ``prepend_bos`` each window is BOS + ``context_size - 1`` stream
tokens. A final partial window is dropped. ``keep_mask`` is False at special-token positions
(BOS, EOS, pad, ...) when ``exclude_special_tokens``, so they never reach training or evaluation.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from saekit.data.datasets import DatasetError, Document

TOKENIZE_CHUNK = 64  # documents per call of the fast tokenizer


class TokenWindows:
    """Iterator of ``(input_ids_T, keep_mask_T)`` windows packed from ``documents``.

    ``state_dict()`` records the documents consumed and the tokens carried over, so
    ``load_state_dict()`` on a fresh instance (over the same documents) yields exactly the next
    windows without re-tokenizing what came before.
    """

    def __init__(
        self,
        documents: Iterable[Document],
        tokenizer: Any,
        context_size: int,
        *,
        prepend_bos: bool = True,
        exclude_special_tokens: bool = True,
    ) -> None:
        if context_size < 2:
            raise ValueError(f"context_size must be >= 2, got {context_size}")
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        if prepend_bos and bos is None:
            raise ValueError("prepend_bos=True but the tokenizer has no BOS token")
        self.documents = documents
        self.tokenizer = tokenizer
        self.context_size = context_size
        self.prepend_bos = prepend_bos
        self.exclude_special_tokens = exclude_special_tokens
        self.bos_token_id: int | None = bos
        self.separator_token_id: int | None = eos if eos is not None else bos
        self._special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self._documents_done = 0
        self._windows_done = 0
        self._carry: list[int] = []  # stream tokens not yet in a window start at _start
        self._start = 0
        self._stream: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __iter__(self) -> TokenWindows:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._stream is None:
            self._stream = self._windows()
        return next(self._stream)

    def state_dict(self) -> dict[str, Any]:
        """Position in the data: windows yielded, documents consumed, tokens carried over."""
        return {
            "windows_done": self._windows_done,
            "documents_done": self._documents_done,
            "carry": self._carry[self._start :],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue right after the window at which ``state`` was taken."""
        if self._stream is not None and iter(self.documents) is self.documents:
            raise ValueError("cannot rewind TokenWindows over a one-shot iterator of documents")
        self._windows_done = int(state["windows_done"])
        self._documents_done = int(state["documents_done"])
        self._carry = [int(t) for t in state["carry"]]
        self._start = 0
        self._stream = None

    def _tokenized(self) -> Iterator[list[int]]:
        """Token ids of each remaining document, tokenized in chunks."""
        docs = itertools.islice(iter(self.documents), self._documents_done, None)
        while chunk := list(itertools.islice(docs, TOKENIZE_CHUNK)):
            texts = [d for d in chunk if isinstance(d, str)]
            encoded = iter(
                self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
                if texts
                else []
            )
            for doc in chunk:
                yield next(encoded) if isinstance(doc, str) else self._checked(doc)

    def _checked(self, ids: list[int]) -> list[int]:
        """Pre-tokenised ids, refused when outside the tokenizer's vocabulary."""
        ids = list(ids)
        vocab = len(self.tokenizer)
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise DatasetError(
                f"a pre-tokenised document holds token id {bad[0]}, outside the tokenizer's "
                f"vocabulary (0..{vocab - 1}); was it tokenised for another model?"
            )
        return ids

    def _windows(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        body = self.context_size - int(self.prepend_bos)
        sep = [] if self.separator_token_id is None else [self.separator_token_id]
        for ids in self._tokenized():
            self._carry = self._carry[self._start :] + ids + sep
            self._start = 0
            self._documents_done += 1
            while len(self._carry) - self._start >= body:
                window = self._carry[self._start : self._start + body]
                self._start += body
                self._windows_done += 1
                yield self._window(window)

    def _window(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prepend_bos:
            tokens = [self.bos_token_id, *tokens]
        input_ids_T = torch.tensor(tokens, dtype=torch.long)
        if self.exclude_special_tokens:
            keep_mask_T = ~torch.isin(input_ids_T, self._special_ids)
        else:
            keep_mask_T = torch.ones_like(input_ids_T, dtype=torch.bool)
        return input_ids_T, keep_mask_T


def iter_token_batches(
    windows: Iterable[tuple[torch.Tensor, torch.Tensor]], rows: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stack ``rows`` windows at a time into ``(input_ids_BT, keep_mask_BT)``.

    The last batch may have fewer rows.
    """
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    it = iter(windows)
    while chunk := list(itertools.islice(it, rows)):
        ids, masks = zip(*chunk, strict=True)
        yield torch.stack(ids), torch.stack(masks)
