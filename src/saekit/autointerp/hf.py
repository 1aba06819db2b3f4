"""``hf:MODEL``: a chat model run in process with transformers.

Free answers (the explainer) are decoded greedily at temperature 0 (sampled above it), with the
log-probabilities of the top tokens at each step; an answer ``prefix`` (``Explanation:``) is
written for the model and continued, which keeps small models from echoing the excerpts, and
the answer stops at the end of its first non-empty line (the parser reads nothing after it). A
scorer's answer (``binary_answers=n``) is decoded under a constraint instead: after ``[`` the
model chooses between the tokens ``0`` and ``1`` n times, the separators ``, `` and ``]`` being
written for it. The answer is then always well formed (small models otherwise drift into other
numbers), and each choice comes with delphi's probability P("1") / (P("0") + P("1")) from the
model's own logits, so AUC is available.

Speed, same answers: only the last position's logits are computed, and the keys and values of a
prompt prefix that earlier prompts share (the system message and the worked example of a scorer
template, 40% of a scorer prompt) are computed once and reused (``reuse_prefix``).
"""

from __future__ import annotations

import copy
import inspect
import threading
from dataclasses import dataclass
from typing import Any

import torch

from saekit.autointerp.clients import TOP_LOGPROBS, Completion, TokenLogprobs

MIN_SHARED = 32  # prompt tokens shared with a cached prefix before its keys/values are reused
MAX_PREFIXES = 4  # cached prefixes (one per prompt template is enough)


@dataclass
class _Prefix:
    ids: list[int]
    cache: Any  # the model's key/value cache of exactly these tokens


def _common(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


class HFClient:
    """A chat model in process. ``spec``: anything :func:`saekit.models.load_model` takes."""

    def __init__(self, spec: str, device: str = "cpu", reuse_prefix: bool = True) -> None:
        from saekit.models import load_model

        lm = load_model(spec, device=device)
        if lm.backend != "hf":
            raise ValueError(f"--explainer hf:{spec}: needs a transformers model, not {spec!r}")
        self._setup(lm.model, lm.tokenizer, f"hf:{spec}", reuse_prefix)

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, tokenizer: object, name: str, reuse_prefix: bool = True
    ) -> HFClient:
        """A client on a model already loaded (e.g. ``load_model(spec).model``)."""
        client = cls.__new__(cls)
        client._setup(model, tokenizer, name, reuse_prefix)
        return client

    def _setup(self, model: torch.nn.Module, tokenizer: object, name: str, reuse: bool) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"--explainer {name}: the tokenizer has no chat template")
        self.name, self.concurrency, self.reuse_prefix = name, 1, reuse
        self._lock = threading.Lock()
        enc = self._encode
        self._digits = [enc("0"), enc("1")]
        self._constrained = all(len(d) == 1 for d in self._digits)
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers 5.x
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._prefixes: list[_Prefix] = []
        self.prompt_tokens = self.reused_tokens = 0  # prompt tokens fed, and taken from a prefix
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos = self.tokenizer.eos_token_id
        self._stop = {t for t in (eos, *(gen_eos if isinstance(gen_eos, list) else [gen_eos]))
                      if t is not None}  # fmt: skip

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _prompt(self, messages: list[dict[str, str]]) -> torch.Tensor:
        enc = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt"
        )
        ids_1T = enc["input_ids"] if hasattr(enc, "keys") else enc
        return ids_1T.to(self.model.device)

    def _forward(self, ids_1T: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
        """Logits at the last position, and the key/value cache extended by ``ids_1T``."""
        kw = {self._cache_kw: cache} if cache is not None else {}
        out = self.model(ids_1T, use_cache=True, **self._last_only, **kw)
        new = out["cache"] if "cache" in out else out["past_key_values"]
        return out.logits[0, -1].float(), new

    def _prefill(self, ids_1T: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """:meth:`_forward` of a prompt, reusing the cached keys/values of its longest prefix
        shared with an earlier prompt (at least ``MIN_SHARED`` tokens)."""
        ids = ids_1T[0].tolist()
        best = max(self._prefixes, key=lambda p: _common(p.ids, ids), default=None)
        shared = min(_common(best.ids, ids), len(ids) - 1) if best is not None else 0
        self.prompt_tokens += len(ids)
        if not self.reuse_prefix or shared < MIN_SHARED:
            logits_V, cache = self._forward(ids_1T)
            if self.reuse_prefix:  # cut down to what the next prompt shares with it
                keep = self._prefixes[-(MAX_PREFIXES - 1) :] if MAX_PREFIXES > 1 else []
                self._prefixes = [*keep, _Prefix(ids, copy.deepcopy(cache))]
            return logits_V, cache
        if len(best.ids) > shared:
            best.cache.crop(shared - len(best.ids))  # negative: drop that many tokens
            best.ids = best.ids[:shared]
        self.reused_tokens += shared
        return self._forward(ids_1T[:, shared:], copy.deepcopy(best.cache))

    @torch.no_grad()
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
        """Generate an answer: a constrained 0/1 list when ``binary_answers`` is given, else
        free text that starts with ``prefix`` (written for the model, then continued to the
        end of its first non-empty line)."""
        ids_1T = self._prompt(messages)
        with self._lock:
            if binary_answers is not None and self._constrained:
                return self._binary(ids_1T, binary_answers)
            if not prefix:
                return self._generate(ids_1T, max_tokens, temperature, logprobs, False)
            head = torch.tensor([self._encode(prefix)], device=ids_1T.device)
            done = self._generate(
                torch.cat([ids_1T, head], 1), max_tokens, temperature, logprobs, True
            )
            done.text = prefix + done.text
            if done.logprobs is not None:
                done.logprobs.insert(0, TokenLogprobs(prefix, {prefix: 0.0}))
            done.prompt_tokens = ids_1T.shape[1]
            return done

    def _generate(
        self, ids_1T: torch.Tensor, max_tokens: int, temperature: float, logprobs: bool,
        one_line: bool,
    ) -> Completion:  # fmt: skip
        """Greedy (``temperature`` 0) or sampled decoding up to ``max_tokens`` or the end of
        the answer; ``one_line``: also stop at a newline that follows some text."""
        tok, new, lps = self.tokenizer, [], [] if logprobs else None
        logits_V, cache = self._prefill(ids_1T)
        while len(new) < max_tokens:
            logp_V = torch.log_softmax(logits_V, dim=-1)
            if temperature > 0:
                nxt = int(torch.multinomial(torch.softmax(logits_V / temperature, -1), 1))
            else:
                nxt = int(logp_V.argmax())
            if nxt in self._stop:
                break
            new.append(nxt)
            if lps is not None:
                top = logp_V.topk(TOP_LOGPROBS)
                alts = tok.batch_decode([[i] for i in top.indices.tolist()])
                lps.append(TokenLogprobs(tok.decode([nxt]), dict(zip(alts, top.values.tolist(),
                                                                      strict=True))))  # fmt: skip
            if one_line and "\n" in tok.decode([nxt]) and tok.decode(new).strip():
                break
            if len(new) < max_tokens:
                logits_V, cache = self._forward(torch.tensor([[nxt]], device=ids_1T.device), cache)
        text = tok.decode(new, skip_special_tokens=True)
        return Completion(text, lps, ids_1T.shape[1], len(new))

    def _binary(self, ids_1T: torch.Tensor, n: int) -> Completion:
        """``[d, d, ...]``: each d the likelier of the tokens 0 and 1 (KV cache reused)."""
        zero, one = self._digits[0][0], self._digits[1][0]
        feed = torch.cat([ids_1T, torch.tensor([self._encode("[")], device=ids_1T.device)], 1)
        logits_V, cache = self._prefill(feed)
        pieces = [TokenLogprobs("[", {"[": 0.0})]
        for i in range(n):
            logp_V = torch.log_softmax(logits_V, dim=-1)
            lp0, lp1 = float(logp_V[zero]), float(logp_V[one])
            digit = int(lp1 > lp0)
            pieces.append(TokenLogprobs(str(digit), {"0": lp0, "1": lp1}))
            sep = ", " if i < n - 1 else "]"
            pieces.append(TokenLogprobs(sep, {sep: 0.0}))
            if i < n - 1:
                nxt = [[one if digit else zero, *self._encode(sep)]]
                logits_V, cache = self._forward(torch.tensor(nxt, device=feed.device), cache)
        text = "".join(p.token for p in pieces)
        return Completion(text, pieces, ids_1T.shape[1], 2 * n + 1)
