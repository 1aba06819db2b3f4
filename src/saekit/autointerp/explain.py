"""The explainer: marked top-activating windows in, one short phrase out.

Tokens at or above ``threshold`` x the window's largest activation are wrapped in ``<< >>``
(runs of them share one pair); a ``Strength`` line lists them with their activation on a 1-10
scale relative to the feature's maximum (delphi's normalisation: ceil(10 x act / max)).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from saekit.autointerp.clients import LLMClient
from saekit.autointerp.exampleset import Window
from saekit.autointerp.prompts import Messages, fill

THRESHOLD = 0.3
MAX_STRENGTHS = 10  # tokens listed per "Strength" line
MAX_EXPLANATION_CHARS = 200
L, R = "<<", ">>"
ANSWER_PREFIX = "Explanation:"  # what the shipped template asks the answer to start with


def show(token: str) -> str:
    """A token as shown to the LLM: newlines written as \\n so each excerpt stays one line."""
    return token.replace("\r", "").replace("\n", "\\n")


def marked(acts: Sequence[float], threshold: float = THRESHOLD) -> list[bool]:
    """Which tokens are marked: activation > 0 and >= ``threshold`` x the window's maximum."""
    top = max(acts, default=0.0)
    return [a > 0 and a >= threshold * top for a in acts]


def highlight(tokens: Sequence[str], marks: Sequence[bool]) -> str:
    """The tokens joined, each run of marked tokens wrapped in one ``<< >>`` pair."""
    out, inside = [], False
    for tok, m in zip(tokens, marks, strict=True):
        if m and not inside:
            out.append(L)
        if not m and inside:
            out.append(R)
        out.append(show(tok))
        inside = m
    if inside:
        out.append(R)
    return "".join(out)


def strength(act: float, feature_max: float) -> int:
    """Activation on a 1-10 scale relative to the feature's maximum."""
    if feature_max <= 0:
        return 0
    return max(1, min(10, math.ceil(10 * act / feature_max)))


def format_explain_examples(
    windows: Sequence[Window], feature_max: float, threshold: float = THRESHOLD
) -> str:
    """The excerpts block of the explainer prompt."""
    blocks = []
    for i, w in enumerate(windows):
        marks = marked(w.acts, threshold)
        listed = [
            f"{show(t).strip() or repr(t)} {strength(a, feature_max)}"
            for t, a, m in zip(w.tokens, w.acts, marks, strict=True)
            if m
        ][:MAX_STRENGTHS]
        blocks.append(
            f"Excerpt {i + 1}: {highlight(w.tokens, marks)}\nStrength: {', '.join(listed)}"
        )
    return "\n".join(blocks)


def explain_messages(
    template: Messages, windows: Sequence[Window], feature_max: float, threshold: float = THRESHOLD
) -> Messages:
    """The explainer's chat for one feature."""
    return fill(template, examples=format_explain_examples(windows, feature_max, threshold))


_LABEL = re.compile(r"\[?\s*explanation\s*\]?\s*[:\-=]\s*(.*)", re.IGNORECASE)
_RESTATED = re.compile(  # "The tokens in << >> have in common that they are ..." -> "..."
    r"^\W*the (marked |highlighted )?tokens( in)?\s*(<<\s*>>)?\s*(all )?(have|share) in common"
    r"\s*(is|are|that|:)?\s*(they (all )?(are|have)\s*)?",
    re.IGNORECASE,
)
_ECHO = re.compile(r"^\s*excerpt\s*\d+\s*:\s*", re.IGNORECASE)  # "Excerpt 2: ..." -> "..."
_JUNK = " \t\"'`*_.,;:-<>[]()"


def parse_explanation(text: str) -> str:
    """The phrase in an explainer's answer.

    Takes the text after the first ``Explanation:`` label (any case, ``[EXPLANATION]:`` too),
    else the first line; an echoed ``Excerpt N:`` / ``Strength:`` is skipped; strips quotes,
    markdown, ``<< >>`` and a restated "the tokens in << >> have in common that".
    Raises ``ValueError`` when nothing is left.
    """
    lines = [_ECHO.sub("", ln).strip() for ln in text.strip().splitlines()]
    lines = [ln for ln in lines if ln and not re.fullmatch(r"(excerpt|strength)\W*", ln, re.I)]
    start = next((i for i, ln in enumerate(lines) if _LABEL.search(ln)), None)
    if start is not None:
        rest = _ECHO.sub("", _LABEL.search(lines[start]).group(1)).strip()
        lines = ([rest] if rest else []) + lines[start + 1 :]
    found = next((ln for ln in lines if not re.match(r"strength\s*:", ln, re.I)), "")
    found = _RESTATED.sub("", found.replace(L, "").replace(R, ""))
    found = re.split(r"(?<=\w\w)\. ", found, maxsplit=1)[0]  # the first sentence
    found = re.sub(r"\s+", " ", found).strip(_JUNK)
    if len(found) > MAX_EXPLANATION_CHARS:
        found = found[:MAX_EXPLANATION_CHARS].rsplit(" ", 1)[0]
    if not found:
        raise ValueError(f"no explanation in the answer {text[:120]!r}")
    return found


def explain(
    client: LLMClient,
    template: Messages,
    windows: Sequence[Window],
    feature_max: float,
    *,
    threshold: float = THRESHOLD,
    max_tokens: int = 60,
) -> tuple[str | None, str]:
    """``(explanation or None when unparsable, raw answer)`` for one feature's windows."""
    messages = explain_messages(template, windows, feature_max, threshold)
    answer = client.complete(messages, max_tokens=max_tokens, prefix=ANSWER_PREFIX).text
    try:
        return parse_explanation(answer), answer
    except ValueError:  # e.g. nothing after the prefix: ask once more, the answer left free
        answer = client.complete(messages, max_tokens=max_tokens).text
    try:
        return parse_explanation(answer), answer
    except ValueError:
        return None, answer
