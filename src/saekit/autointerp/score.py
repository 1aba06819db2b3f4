"""Detection and fuzzing scorers (delphi's definitions).

- detection: activating (quantile-sampled) and non-activating windows, nothing marked; the
  LLM says 1/0 per window: does the feature fire in it, judging by the explanation?
- fuzzing: activating windows with their tokens >= 0.3 x the window's max marked (correctly
  marked), non-activating windows with as many tokens marked as activating windows fire on
  on average (ceil of the mean count; the window's example token first, the rest at random);
  the LLM says 1/0 per window: does the marking fit the explanation?

The samples are shuffled (seeded per feature and scorer) and shown ``per_prompt`` at a time;
the truth of each is whether it is activating (correctly marked).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from saekit.autointerp.clients import Completion, LLMClient
from saekit.autointerp.exampleset import FeatureExamples, Window
from saekit.autointerp.explain import THRESHOLD, highlight, marked, show
from saekit.autointerp.prompts import Messages, fill

SCORERS = ("detection", "fuzzing")


@dataclass
class Sample:
    """One window as a scorer shows it, and the scorer's answer about it."""

    id: str
    activating: bool
    text: str
    prediction: int | None = None
    probability: float | None = None
    retried: bool = False  # the first answer did not parse; the LLM was asked once more

    def to_dict(self) -> dict:
        """JSON-able form without the text."""
        return {k: v for k, v in asdict(self).items() if k != "text"}


def _plain(w: Window) -> str:
    return "".join(show(t) for t in w.tokens)


def detection_samples(fe: FeatureExamples) -> list[Sample]:
    """Activating and non-activating windows, unmarked."""
    return [Sample(w.id, w.activating, _plain(w)) for w in fe.activating + fe.non_activating]


def n_incorrect(windows: Sequence[Window]) -> int:
    """Tokens to mark in a non-activating window: ceil(mean firing tokens per window)."""
    if not windows:
        return 1
    return max(1, math.ceil(sum(sum(a > 0 for a in w.acts) for w in windows) / len(windows)))


def fuzz_marks(w: Window, n: int, rng: random.Random, threshold: float = THRESHOLD) -> list[bool]:
    """The tokens marked in ``w``: the true ones if it is activating, else ``n`` wrong ones."""
    if w.activating:
        return marked(w.acts, threshold)
    top = max(w.acts, default=0.0)
    below = [i for i, a in enumerate(w.acts) if not (a > 0 and a >= threshold * top)]
    chosen = [w.centre] if w.centre in below else []
    rest = [i for i in below if i != w.centre]
    chosen += rng.sample(rest, min(max(n - len(chosen), 0), len(rest)))
    return [i in chosen for i in range(len(w.tokens))]


def fuzzing_samples(
    fe: FeatureExamples, rng: random.Random, threshold: float = THRESHOLD
) -> list[Sample]:
    """Activating windows correctly marked, non-activating ones wrongly marked."""
    n = n_incorrect(fe.activating)
    return [
        Sample(w.id, w.activating, highlight(w.tokens, fuzz_marks(w, n, rng, threshold)))
        for w in fe.activating + fe.non_activating
    ]


def classifier_messages(template: Messages, explanation: str, batch: Sequence[Sample]) -> Messages:
    """The scorer's chat for one batch of samples."""
    examples = "\n".join(f"Excerpt {i + 1}: {s.text}" for i, s in enumerate(batch))
    return fill(template, examples=examples, explanation=explanation, n=len(batch))


_WORDS = {"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0}
_ITEM = re.compile(r"[A-Za-z]+|\d+")


def _items(text: str) -> list[int] | None:
    words = [w.lower() for w in _ITEM.findall(text)]
    values = [_WORDS.get(w) for w in words]
    return None if any(v is None for v in values) else values  # type: ignore[return-value]


def parse_predictions(text: str, n: int) -> tuple[list[int], tuple[int, int]]:
    """``n`` answers (1/0) from an LLM reply, and the span of the reply they came from.

    Accepts ``[1, 0, 1]`` (also true/false, yes/no, quoted), ``Excerpt 1: 1`` lines, or a
    reply holding exactly ``n`` standalone 0/1. Raises ``ValueError`` otherwise.
    """
    for m in re.finditer(r"\[([^\[\]]*)\]", text):
        values = _items(m.group(1))
        if values is not None and len(values) == n:
            return values, m.span(1)
    numbered = re.findall(
        r"(?:excerpt|example)?\s*(\d+)\s*[:.)\-]\s*(1|0|yes|no|true|false)\b", text, re.I
    )
    by_index = {int(i): _WORDS[v.lower()] for i, v in numbered}
    if numbered and sorted(by_index) == list(range(1, n + 1)):
        return [by_index[i] for i in range(1, n + 1)], (0, len(text))
    bare = list(re.finditer(r"(?<![\w.])[01](?![\w.])", text))
    if len(bare) == n:
        return [int(m.group(0)) for m in bare], (bare[0].start(), bare[-1].end())
    raise ValueError(f"expected {n} answers of 0/1, got {text[:120]!r}")


def answer_probabilities(
    completion: Completion, span: tuple[int, int], n: int
) -> list[float | None] | None:
    """P("1") / (P("0") + P("1")) at each answer token inside ``span`` (None if unaligned)."""
    if not completion.logprobs:
        return None
    digits, offset = [], 0
    for lp in completion.logprobs:
        start, offset = offset, offset + len(lp.token)
        if lp.token.strip(" [],'\"\n") in ("0", "1") and start < span[1] and offset > span[0]:
            digits.append(lp)
    if offset != len(completion.text) or len(digits) != n:
        return None
    probs: list[float | None] = []
    for lp in digits:
        p = {d: sum(math.exp(v) for t, v in lp.top.items() if t.strip(" [],'\"\n") == d)
             for d in ("0", "1")}  # fmt: skip
        probs.append(p["1"] / (p["0"] + p["1"]) if p["0"] + p["1"] > 0 else None)
    return probs


def classify(
    client: LLMClient,
    template: Messages,
    explanation: str,
    samples: Sequence[Sample],
    *,
    per_prompt: int = 5,
    logprobs: bool = True,
    max_tokens: int = 40,
    retry: Messages | None = None,
) -> list[Sample]:
    """Ask the LLM about ``samples`` in batches of ``per_prompt``; fills predictions. An answer
    that does not parse is asked for once more with ``retry`` (the chat, the answer, then the
    ``retry`` message) when given; predictions left None count as failed."""
    out = []
    for i in range(0, len(samples), per_prompt):
        batch = [Sample(**asdict(s)) for s in samples[i : i + per_prompt]]
        messages = classifier_messages(template, explanation, batch)
        ask = {"max_tokens": max_tokens, "logprobs": logprobs, "binary_answers": len(batch)}
        completion = client.complete(messages, **ask)
        try:
            values, span = parse_predictions(completion.text, len(batch))
        except ValueError:
            if retry is None:
                out.extend(batch)
                continue
            again = [*messages, {"role": "assistant", "content": completion.text},
                     *fill(retry, n=len(batch))]  # fmt: skip
            completion = client.complete(again, **ask)
            for s in batch:
                s.retried = True
            try:
                values, span = parse_predictions(completion.text, len(batch))
            except ValueError:
                out.extend(batch)
                continue
        probs = answer_probabilities(completion, span, len(batch)) or [None] * len(batch)
        for s, v, p in zip(batch, values, probs, strict=True):
            s.prediction, s.probability = v, p
        out.extend(batch)
    return out


def scorer_samples(
    scorer: str, fe: FeatureExamples, seed: int, threshold: float = THRESHOLD
) -> list[Sample]:
    """The shuffled samples of ``scorer`` for one feature (the same for any explanation)."""
    rng = random.Random(f"{seed}:{scorer}:{fe.feature}")
    if scorer == "detection":
        samples = detection_samples(fe)
    elif scorer == "fuzzing":
        samples = fuzzing_samples(fe, rng, threshold)
    else:
        raise ValueError(f"--scorers: unknown scorer {scorer!r} (known: {', '.join(SCORERS)})")
    rng.shuffle(samples)
    return samples
