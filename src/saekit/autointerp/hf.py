"""``hf:MODEL``: a chat model run in process with transformers.

Free answers (the explainer) are generated greedily at temperature 0, with the log-probabilities
of the top tokens at each step; an answer ``prefix`` (``Explanation:``) is written for the
model and continued, which keeps small models from echoing the excerpts. A scorer's answer (``binary_answers=n``) is decoded under a
constraint instead: after ``[`` the model chooses between the tokens ``0`` and ``1`` n times,
the separators ``, `` and ``]`` being written for it. The answer is then always well formed
(small models otherwise drift into other numbers), and each choice comes with delphi's
probability P("1") / (P("0") + P("1")) from the model's own logits, so AUC is available.
"""

from __future__ import annotations

import inspect
import threading

import torch

from saekit.autointerp.clients import TOP_LOGPROBS, Completion, TokenLogprobs


class HFClient:
    """A chat model in process. ``spec``: anything :func:`saekit.models.load_model` takes."""

    def __init__(self, spec: str, device: str = "cpu") -> None:
        from saekit.models import load_model

        lm = load_model(spec, device=device)
        if lm.backend != "hf":
            raise ValueError(f"--explainer hf:{spec}: needs a transformers model, not {spec!r}")
        self._setup(lm.model, lm.tokenizer, f"hf:{spec}")

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer: object, name: str) -> HFClient:
        """A client on a model already loaded (e.g. ``load_model(spec).model``)."""
        client = cls.__new__(cls)
        client._setup(model, tokenizer, name)
        return client

    def _setup(self, model: torch.nn.Module, tokenizer: object, name: str) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"--explainer {name}: the tokenizer has no chat template")
        self.name, self.concurrency = name, 1
        self._lock = threading.Lock()
        enc = self._encode
        self._digits = [enc("0"), enc("1")]
        self._constrained = all(len(d) == 1 for d in self._digits)
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers 5.x

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _prompt(self, messages: list[dict[str, str]]) -> torch.Tensor:
        enc = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt"
        )
        ids_1T = enc["input_ids"] if hasattr(enc, "keys") else enc
        return ids_1T.to(self.model.device)

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
        free text that starts with ``prefix`` (written for the model, then continued)."""
        ids_1T = self._prompt(messages)
        with self._lock:
            if binary_answers is not None and self._constrained:
                return self._binary(ids_1T, binary_answers)
            if not prefix:
                return self._generate(ids_1T, max_tokens, temperature, logprobs)
            head = torch.tensor([self._encode(prefix)], device=ids_1T.device)
            done = self._generate(torch.cat([ids_1T, head], 1), max_tokens, temperature, logprobs)
            done.text = prefix + done.text
            if done.logprobs is not None:
                done.logprobs.insert(0, TokenLogprobs(prefix, {prefix: 0.0}))
            done.prompt_tokens = ids_1T.shape[1]
            return done

    def _generate(
        self, ids_1T: torch.Tensor, max_tokens: int, temperature: float, logprobs: bool
    ) -> Completion:
        tok, sample = self.tokenizer, temperature > 0
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = self.model.generate(
            ids_1T, attention_mask=torch.ones_like(ids_1T), max_new_tokens=max_tokens,
            do_sample=sample, temperature=temperature if sample else None, top_p=None,
            top_k=None, output_logits=logprobs, return_dict_in_generate=True, pad_token_id=pad,
        )  # fmt: skip
        new = out.sequences[0, ids_1T.shape[1] :].tolist()
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        stop = {tok.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])}
        n_new = next((i for i, t in enumerate(new) if t in stop), len(new))
        lps = None
        if logprobs:
            lps = []
            for step in range(n_new):
                logp_V = torch.log_softmax(out.logits[step][0].float(), dim=-1)
                top = logp_V.topk(TOP_LOGPROBS)
                alts = tok.batch_decode([[i] for i in top.indices.tolist()])
                top_lp = dict(zip(alts, top.values.tolist(), strict=True))
                lps.append(TokenLogprobs(tok.decode([new[step]]), top_lp))
        text = tok.decode(new[:n_new], skip_special_tokens=True)
        return Completion(text, lps, ids_1T.shape[1], n_new)

    def _binary(self, ids_1T: torch.Tensor, n: int) -> Completion:
        """``[d, d, ...]``: each d the likelier of the tokens 0 and 1 (KV cache reused)."""
        zero, one = self._digits[0][0], self._digits[1][0]
        feed = torch.cat([ids_1T, torch.tensor([self._encode("[")], device=ids_1T.device)], 1)
        out = self.model(feed, use_cache=True)
        pieces = [TokenLogprobs("[", {"[": 0.0})]
        for i in range(n):
            logp_V = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            lp0, lp1 = float(logp_V[zero]), float(logp_V[one])
            digit = int(lp1 > lp0)
            pieces.append(TokenLogprobs(str(digit), {"0": lp0, "1": lp1}))
            sep = ", " if i < n - 1 else "]"
            pieces.append(TokenLogprobs(sep, {sep: 0.0}))
            if i < n - 1:
                nxt = torch.tensor(
                    [[one if digit else zero, *self._encode(sep)]], device=feed.device
                )
                cache = out["cache"] if "cache" in out else out["past_key_values"]
                out = self.model(nxt, use_cache=True, **{self._cache_kw: cache})
        text = "".join(p.token for p in pieces)
        return Completion(text, pieces, ids_1T.shape[1], 2 * n + 1)
