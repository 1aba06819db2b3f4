"""LLM clients: any OpenAI-compatible server (``openai:URL``), a chat model in process
(``hf:MODEL``, in :mod:`saekit.autointerp.hf`), and a disk cache of every prompt/response pair keyed by content hash.

A client has ``name`` (its identity in the cache key), ``concurrency`` (how many requests the
pipeline may have in flight) and ``complete(messages, max_tokens=, temperature=, logprobs=)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from saekit.fileio import atomic_write_text

TOP_LOGPROBS = 5
RETRY_STATUS = (408, 409, 429)  # and every 5xx
ANSWER_BIAS = 100.0  # logit_bias on the tokens of well-formed 0/1 answers (OpenAI's maximum)


def binary_answer_cap(n: int, tokenizer: Any = None) -> int:
    """Answer tokens a server may spend on a list of n 0/1: as many as ``[0, 0, 0]`` takes
    under the served model's ``tokenizer`` (so a biased model cannot run on past n answers),
    else ``3n + 4``."""
    if tokenizer is None:
        return 3 * n + 4
    return len(tokenizer.encode("[" + ", ".join("0" * n) + "]", add_special_tokens=False))


def answer_token_ids(tokenizer: Any) -> list[int]:
    """The token ids of well-formed answers ``[1]``, ``[0, 1, 1]``, ... under ``tokenizer``
    (plus its end-of-text token): the tokens a biased server may choose from."""
    texts = ["[0]", "[1]", "[0, 1]", "[1, 0]", "[0, 0, 1, 1]", "[1, 1, 0, 0]", "[0,1]", "[1,0]"]
    ids = {i for t in texts for i in tokenizer.encode(t, add_special_tokens=False)}
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


class LLMError(RuntimeError):
    """The LLM could not answer (server unreachable, model unknown, retries used up)."""


@dataclass
class TokenLogprobs:
    """One generated token and the log-probabilities of the most likely alternatives."""

    token: str
    top: dict[str, float]


@dataclass
class Completion:
    """An answer with its token counts; ``logprobs`` is None when the client gives none."""

    text: str
    logprobs: list[TokenLogprobs] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the cache's file content)."""
        return {k: v for k, v in asdict(self).items() if k != "cached"}

    @classmethod
    def from_dict(cls, data: dict[str, Any], cached: bool = False) -> Completion:
        """Inverse of :meth:`to_dict`."""
        lps = data.get("logprobs")
        return cls(
            text=data["text"],
            logprobs=None if lps is None else [TokenLogprobs(**t) for t in lps],
            prompt_tokens=int(data.get("prompt_tokens", 0)),
            completion_tokens=int(data.get("completion_tokens", 0)),
            cached=cached,
        )


class LLMClient(Protocol):
    """What the explainer and scorers need from an LLM."""

    name: str
    concurrency: int

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        logprobs: bool = False,
        binary_answers: int | None = None,
        prefix: str | None = None,
    ) -> Completion:
        """Answer ``messages``. ``binary_answers=n``: the answer should be a list of n 0/1;
        ``prefix``: the answer should start with this text. A client that can enforce these
        (``hf:``) does; others leave them to the prompt, which asks for the same."""
        ...


class OpenAIClient:
    """Any OpenAI-compatible chat-completions server (vLLM, llama.cpp, `transformers serve`, ...).

    ``model=None`` takes the only model the server lists. The API key, if any, is read from
    the environment variable ``api_key_env``. Requests time out after ``timeout`` seconds and
    are retried ``retries`` times with exponential backoff on timeouts, 408/409/429 and 5xx.

    A scorer's 0/1 answer (``binary_answers=n``) gets at most :func:`binary_answer_cap` tokens;
    with ``answer_tokenizer`` (the served model's tokenizer: a transformers id or folder) the
    cap is the length of a well-formed answer and the request carries a ``logit_bias`` that
    leaves the model only the tokens of well-formed answers, for servers that honour it
    (`transformers serve`, vLLM, OpenAI).
    """

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 1.0,
        concurrency: int = 4,
        answer_tokenizer: str | None = None,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        if self.url.count("/") <= 2:  # scheme://host[:port] only: the usual /v1 prefix
            self.url += "/v1"
        key = os.environ.get(api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(timeout=timeout, headers=headers)
        self.retries, self.backoff, self.api_key_env = retries, backoff, api_key_env
        self.concurrency = max(1, concurrency)
        self.model = model or self._only_model()
        self.name = f"openai:{self.url}#{self.model}"
        self.answer_bias: dict[str, float] | None = None
        self._answer_tokenizer = None
        if answer_tokenizer:
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(answer_tokenizer)
            except (OSError, ValueError) as err:
                raise ValueError(
                    f"--answer-tokenizer {answer_tokenizer!r}: cannot load a tokenizer ({err})"
                ) from err
            self.answer_bias = {str(i): ANSWER_BIAS for i in answer_token_ids(tok)}
            self._answer_tokenizer = tok
            self.name += "#biased"  # other answers: another cache key

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        import httpx

        url = f"{self.url}{path}"
        last = ""
        for attempt in range(self.retries + 1):
            wait = None
            try:
                resp = self.http.request(method, url, json=body)
            except httpx.ConnectError as err:
                last = f"cannot connect ({err}); is the server running?"
            except (httpx.TimeoutException, httpx.TransportError) as err:
                last = f"{type(err).__name__}: {err}"
            else:
                if resp.status_code < 400:
                    return resp.json()
                detail = resp.text[:300]
                if resp.status_code in (401, 403):
                    given = "set" if "Authorization" in self.http.headers else "not set"
                    raise LLMError(
                        f"{url}: HTTP {resp.status_code} (API key from ${self.api_key_env}: "
                        f"{given}): {detail}"
                    )
                if resp.status_code not in RETRY_STATUS and resp.status_code < 500:
                    raise LLMError(f"{url}: HTTP {resp.status_code}: {detail}")
                last = f"HTTP {resp.status_code}: {detail}"
                wait = _retry_after(resp.headers.get("retry-after"))
            if attempt < self.retries:
                delay = self.backoff * 2**attempt * (0.5 + random.random() / 2)
                time.sleep(min(wait, 60.0) if wait is not None else delay)
        raise LLMError(
            f"no answer from the OpenAI-compatible server at {self.url} (--explainer openai:URL) "
            f"after {self.retries + 1} tries: {last}"
        )

    def models(self) -> list[str]:
        """The model ids the server lists."""
        return [m["id"] for m in self._request("GET", "/models").get("data", [])]

    def _only_model(self) -> str:
        names = self.models()
        if len(names) != 1:
            raise ValueError(
                f"the server at {self.url} lists {len(names)} models; choose one with "
                f"--explainer-model: {', '.join(names) or '(none)'}"
            )
        return names[0]

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        logprobs: bool = False,
        binary_answers: int | None = None,
        prefix: str | None = None,
    ) -> Completion:
        """One chat completion (token log-probabilities requested when ``logprobs``)."""
        if binary_answers is not None:
            cap = binary_answer_cap(binary_answers, self._answer_tokenizer)
            max_tokens = min(max_tokens, cap)
        body: dict[str, Any] = {
            "model": self.model, "messages": messages, "max_tokens": max_tokens,
            "temperature": temperature,
        }  # fmt: skip
        if binary_answers is not None and self.answer_bias:
            body["logit_bias"] = self.answer_bias
        if logprobs:
            body |= {"logprobs": True, "top_logprobs": TOP_LOGPROBS}
        try:
            data = self._request("POST", "/chat/completions", body)
        except LLMError as err:
            if "HTTP 404" in str(err) or "HTTP 400" in str(err):
                try:
                    served = self.models()
                except LLMError:
                    served = []
                if served and self.model not in served:
                    raise LLMError(
                        f"--explainer-model {self.model!r} is not served at {self.url}; it "
                        f"serves: {', '.join(served)}"
                    ) from err
            raise
        choice = data["choices"][0]
        content = choice.get("message", {}).get("content") or ""
        usage = data.get("usage") or {}
        lp = (choice.get("logprobs") or {}).get("content") if logprobs else None
        lps = None
        if lp:
            lps = [TokenLogprobs(t["token"], {a["token"]: a["logprob"] for a in
                                             t.get("top_logprobs") or [t]}) for t in lp]  # fmt: skip
        return Completion(
            content, lps, int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        )  # fmt: skip


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class CachedClient:
    """Wrap a client: every answer is stored as ``folder/ab/<sha256>.json`` of its request.

    A repeated request is read from disk (no LLM call), so a killed run resumes where it
    stopped. Counts calls, cache hits and tokens (thread-safe).
    """

    def __init__(self, client: LLMClient, folder: str | Path) -> None:
        self.client, self.folder = client, Path(folder)
        self.name, self.concurrency = client.name, client.concurrency
        self.calls = self.hits = self.prompt_tokens = self.completion_tokens = 0
        self._lock = threading.Lock()

    def key(self, messages: list[dict[str, str]], **settings: Any) -> str:
        """Content hash of a request: client identity, messages and generation settings."""
        blob = json.dumps({"client": self.name, "messages": messages, **settings}, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        logprobs: bool = False,
        binary_answers: int | None = None,
        prefix: str | None = None,
    ) -> Completion:
        """The cached answer, or a new one (then stored)."""
        settings: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature,
                                    "logprobs": logprobs}  # fmt: skip
        for name, value in (("binary_answers", binary_answers), ("prefix", prefix)):
            if value is not None:  # keys of plain requests stay as they were
                settings[name] = value
        key = self.key(messages, **settings)
        path = self.folder / key[:2] / f"{key}.json"
        try:
            done = Completion.from_dict(json.loads(path.read_text("utf-8"))["response"], True)
        except (OSError, ValueError, KeyError):
            done = None
        if done is None:
            done = self.client.complete(messages, **settings)
            path.parent.mkdir(parents=True, exist_ok=True)
            entry = {"request": {"client": self.name, "messages": messages, **settings},
                     "response": done.to_dict()}  # fmt: skip
            atomic_write_text(path, json.dumps(entry, ensure_ascii=False))
        with self._lock:
            self.hits += done.cached
            self.calls += not done.cached
            self.prompt_tokens += done.prompt_tokens
            self.completion_tokens += done.completion_tokens
        return done

    def counts(self) -> dict[str, int]:
        """LLM calls made, answers read from the cache, and tokens (cached ones included)."""
        return {"llm_calls": self.calls, "cache_hits": self.hits,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}  # fmt: skip


def make_client(
    spec: str,
    *,
    model: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    timeout: float = 120.0,
    retries: int = 4,
    concurrency: int = 4,
    device: str = "cpu",
    answer_tokenizer: str | None = None,
) -> LLMClient:
    """``hf:MODEL`` or ``openai:URL`` (the ``--explainer`` setting) -> a client."""
    kind, _, rest = spec.partition(":")
    if kind == "hf" and rest:
        from saekit.autointerp.hf import HFClient

        if answer_tokenizer:
            raise ValueError(
                "--answer-tokenizer: only for openai:URL explainers (hf: ones constrain the "
                "answers themselves)"
            )

        return HFClient(rest, device=device)
    if kind == "openai" and rest:
        return OpenAIClient(rest, model, api_key_env=api_key_env, timeout=timeout,
                            retries=retries, concurrency=concurrency,
                            answer_tokenizer=answer_tokenizer)  # fmt: skip
    raise ValueError(
        f"--explainer {spec!r}: use hf:MODEL (e.g. hf:smollm2-135m) or openai:URL "
        f"(e.g. openai:http://localhost:8000/v1)"
    )
