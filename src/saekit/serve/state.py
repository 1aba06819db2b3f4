"""The server's state: the model, the SAEs (`catalog.Entry`), the worker and the limits.

`ServeState` queues the start-up indexing as the worker's first job, so the HTTP server
answers at once (pages show the indexing progress) and the model is only ever used by the
worker thread. Request handlers count prompt tokens with their own copy of the tokenizer
(under a lock), so an over-long prompt is refused before it reaches the queue.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from saekit.serve.catalog import Entry, NotFound, collect_all
from saekit.serve.worker import Job, Worker


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (over it: HTTP 400 naming the limit)."""

    max_prompt_tokens: int = 256
    max_new_tokens: int = 64
    max_strength: float = 1000.0
    max_features: int = 16
    max_graph_tokens: int = 24


class NotReady(Exception):
    """The start-up indexing has not finished (HTTP 503 with its progress)."""


class ServeState:
    """Everything the routes need; `worker` owns the model."""

    def __init__(
        self,
        lm,
        entries: list[Entry],
        *,
        tokens: int = 20_000,
        limits: Limits | None = None,
        collector_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not entries:
            raise ValueError("give at least one SAE folder")
        self.lm = lm
        self.entries = {e.name: e for e in entries}
        self.limits = limits or Limits()
        self.tokens = tokens
        self.replacement = None
        self.graph_reason = "no transcoders are loaded"
        self._tokenizer = copy.deepcopy(lm.tokenizer)
        self._tokenizer_lock = threading.Lock()
        self._collector_kwargs = collector_kwargs or {}
        self.worker = Worker()
        self.startup: Job = self.worker.submit("index", self._index)

    # --- start-up, in the worker
    def _index(self, job: Job) -> dict:
        entries = list(self.entries.values())
        collect_all(entries, self.lm, self.tokens, job.report, **self._collector_kwargs)
        self._build_replacement([e for e in entries if e.is_transcoder])
        job.report(1.0, "ready")
        return {"saes": [e.describe() for e in entries]}

    def _build_replacement(self, transcoders: list[Entry]) -> None:
        if not transcoders:
            return
        from saekit.circuits import PerLayerTranscoders, ReplacementModel

        try:
            layers = PerLayerTranscoders([e.sae for e in transcoders], self.lm.n_layers)
        except ValueError as err:
            self.graph_reason = f"the loaded transcoders do not make a replacement model: {err}"
            return
        self.replacement = ReplacementModel(self.lm, layers)
        self.graph_reason = ""

    def layer_of(self, entry: Entry) -> int:
        """The layer a transcoder of the replacement model replaces."""
        assert self.replacement is not None
        return next(i for i, s in enumerate(self.replacement.transcoders.saes) if s is entry.sae)

    # --- used by the routes
    @property
    def ready(self) -> bool:
        return self.startup.status == "done"

    def require_ready(self) -> None:
        """`NotReady` with the indexing progress until start-up is done."""
        if self.startup.status == "error":
            raise RuntimeError(f"start-up indexing failed: {self.startup.error}")
        if not self.ready:
            pct = f"{100 * (self.startup.progress or 0):.0f}%"
            raise NotReady(
                f"the feature index is still being built ({pct}: {self.startup.message})"
            )

    def entry(self, name: str) -> Entry:
        """The served SAE named ``name``; `NotFound` listing the names."""
        if name not in self.entries:
            raise NotFound(f"unknown SAE {name!r}: this server has {', '.join(self.entries)}")
        return self.entries[name]

    @contextmanager
    def tokenizer(self) -> Iterator[Any]:
        """The request threads' copy of the tokenizer, held under a lock."""
        with self._tokenizer_lock:
            yield self._tokenizer

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` (no special tokens added)."""
        with self.tokenizer() as tokenizer:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_text(self, text: str, limit: int, what: str = "prompt") -> None:
        """ValueError when ``text`` is empty or longer than ``limit`` tokens."""
        if not text.strip():
            raise ValueError(f"{what} is empty")
        if len(text) > 64 * limit:  # bounds the tokenizer's work on absurd inputs
            raise ValueError(f"{what} has {len(text):,} characters; the limit is {limit} tokens")
        n = self.count_tokens(text)
        if n > limit:
            raise ValueError(f"{what} is {n} tokens; this server allows at most {limit}")

    def status(self) -> dict:
        """The page header's facts: readiness, queue, SAEs, limits, graph availability."""
        current = self.worker.current
        return {
            "ready": self.ready,
            "startup": self.startup.summary(),
            "queue": self.worker.waiting(),
            "current": current.summary() if current is not None else None,
            "model": self.lm.spec,
            "saes": [e.describe() for e in self.entries.values()],
            "graph": {"available": self.replacement is not None, "reason": self.graph_reason},
            "limits": asdict(self.limits),
        }
