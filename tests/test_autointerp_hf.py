"""The in-process client's fast paths give the answers of a plain, uncached model forward."""

from __future__ import annotations

import math

import pytest
import torch

from saekit.autointerp.hf import HFClient
from saekit.autointerp.prompts import load_templates
from saekit.autointerp.score import Sample, classifier_messages

CHAT = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from saekit.models import load_model

    lm = load_model(str(tiny_model_dir))  # its own copy: the chat template is added here
    lm.tokenizer.chat_template = CHAT
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only waits on a busy machine
    yield lm.model, lm.tokenizer
    torch.set_num_threads(threads)


def _prompts() -> list[list[dict[str, str]]]:
    """Scorer chats of both templates, two explanations each (they share long prefixes)."""
    t = load_templates()
    texts = ["def f(x): return x", "import os", "class A: pass", "print(1)", "a = [1, 2]"]
    out = []
    for scorer in ("detection", "fuzzing", "detection"):
        for expl in ("function definitions", "imports"):
            samples = [Sample(str(i), i % 2 == 0, s) for i, s in enumerate(texts)]
            out.append(classifier_messages(t[scorer], expl, samples))
    return out


def _reference_probs(model, tok, messages, digits: list[int]) -> list[float]:
    """P("1") / (P("0") + P("1")) before each answer, each from one uncached float64 forward."""
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids) + tok.encode("[")
    zero, one = tok.encode("0")[0], tok.encode("1")[0]
    probs = []
    m64 = model.double()
    try:
        for i, d in enumerate(digits):
            with torch.no_grad():
                logits = m64(torch.tensor([ids])).logits[0, -1]
            p0, p1 = math.exp(logits[zero]), math.exp(logits[one])
            probs.append(p1 / (p0 + p1))
            ids += [one if d else zero, *tok.encode(", " if i < len(digits) - 1 else "]")]
    finally:
        model.float()
    return probs


def test_binary_answers_match_an_uncached_forward(model_and_tokenizer):
    model, tok = model_and_tokenizer
    client = HFClient.from_model(model, tok, "tiny")
    for messages in _prompts():
        done = client.complete(messages, max_tokens=20, binary_answers=5)
        digits = [int(p.token) for p in done.logprobs[1::2]]
        assert done.text == "[" + ", ".join(map(str, digits)) + "]"
        got = [math.exp(p.top["1"]) / (math.exp(p.top["0"]) + math.exp(p.top["1"]))
               for p in done.logprobs[1::2]]  # fmt: skip
        want = _reference_probs(model, tok, messages, digits)
        assert got == pytest.approx(want, abs=1e-4)
        assert digits == [int(p > 0.5) for p in want]
    # the scorer templates' shared prefix was computed once per template, then reused
    assert client.reused_tokens > 0.1 * client.prompt_tokens


def test_prefix_reuse_changes_no_answer(model_and_tokenizer):
    model, tok = model_and_tokenizer
    fast = HFClient.from_model(model, tok, "tiny")
    plain = HFClient.from_model(model, tok, "tiny", reuse_prefix=False)
    for messages in _prompts():
        a = fast.complete(messages, max_tokens=20, binary_answers=5)
        b = plain.complete(messages, max_tokens=20, binary_answers=5)
        assert a.text == b.text
        for x, y in zip(a.logprobs, b.logprobs, strict=True):
            assert x.top == pytest.approx(y.top, abs=1e-4)
        a = fast.complete(messages, max_tokens=8, logprobs=True)
        b = plain.complete(messages, max_tokens=8, logprobs=True)
        assert a.text == b.text and a.completion_tokens == b.completion_tokens
    assert plain.reused_tokens == 0 < fast.reused_tokens


def test_greedy_text_is_generate_s_cut_at_the_first_line(model_and_tokenizer):
    """Free answers equal transformers' greedy `generate`; with a prefix they stop at the
    first newline that follows text."""
    model, tok = model_and_tokenizer
    client = HFClient.from_model(model, tok, "tiny")
    for messages in _prompts()[:2]:
        ids = tok.apply_chat_template(messages, add_generation_prompt=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        for prefix in (None, "Explanation:"):
            head = ids + (tok.encode(prefix) if prefix else [])
            ref = model.generate(torch.tensor([head]), attention_mask=torch.ones(1, len(head),
                                 dtype=torch.long), max_new_tokens=12, do_sample=False,
                                 pad_token_id=tok.pad_token_id)[0, len(head):].tolist()  # fmt: skip
            ref = ref[: next((i for i, t in enumerate(ref) if t == tok.eos_token_id), len(ref))]
            if prefix:
                cut = next((i + 1 for i in range(len(ref)) if "\n" in tok.decode([ref[i]])
                            and tok.decode(ref[: i + 1]).strip()), len(ref))  # fmt: skip
                ref = ref[:cut]
            done = client.complete(messages, max_tokens=12, prefix=prefix)
            assert done.text == (prefix or "") + tok.decode(ref, skip_special_tokens=True)
            assert done.completion_tokens == len(ref)
