"""The OpenAI-compatible client against a tiny local fake server; the answer cache."""

from __future__ import annotations

import json
import socket
import time

import pytest

from fake_llm import FakeServer
from saekit.autointerp.clients import (
    CachedClient,
    Completion,
    LLMError,
    OpenAIClient,
    make_client,
)


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


MSG = [{"role": "user", "content": "hi"}]


def test_chat_usage_logprobs_and_key(server, monkeypatch):
    server.logprobs = [
        {"token": "[1", "logprob": -0.1, "top_logprobs": [{"token": "[1", "logprob": -0.1},
                                                          {"token": "[0", "logprob": -2.0}]},
    ]  # fmt: skip
    monkeypatch.setenv("MY_KEY", "sekrit")
    client = OpenAIClient(server.url, api_key_env="MY_KEY")  # the only model is picked
    assert client.model == "fake-model" and client.name == f"openai:{server.url}#fake-model"
    out = client.complete(MSG, max_tokens=5, logprobs=True)
    assert out.text == "[1, 0]" and (out.prompt_tokens, out.completion_tokens) == (11, 3)
    assert out.logprobs[0].token == "[1" and out.logprobs[0].top == {"[1": -0.1, "[0": -2.0}
    req = server.requests[-1]
    assert req["auth"] == "Bearer sekrit" and req["top_logprobs"] == 5 and req["max_tokens"] == 5
    server.logprobs = None  # a server that ignores logprobs (like `transformers serve`)
    assert client.complete(MSG, max_tokens=5, logprobs=True).logprobs is None
    # a bare host:port gets the usual /v1 prefix
    assert OpenAIClient(server.url.removesuffix("/v1")).url == server.url


def test_retries_on_5xx_and_429_then_succeeds(server):
    server.script = [(503, {}, "busy"), (429, {"Retry-After": "0"}, "slow down")]
    client = OpenAIClient(server.url, "fake-model", retries=2, backoff=0.01)
    assert client.complete(MSG, max_tokens=5).text == "[1, 0]"
    assert len(server.requests) == 3


def test_retries_used_up(server):
    server.script = [(500, {}, "boom")] * 3
    client = OpenAIClient(server.url, "fake-model", retries=2, backoff=0.01)
    with pytest.raises(LLMError, match=r"after 3 tries: HTTP 500: boom"):
        client.complete(MSG, max_tokens=5)


def test_client_errors_are_not_retried(server):
    server.script = [(400, {}, "bad request body")]
    client = OpenAIClient(server.url, "fake-model", retries=3, backoff=0.01)
    with pytest.raises(LLMError, match="HTTP 400: bad request body"):
        client.complete(MSG, max_tokens=5)
    assert len(server.requests) == 1
    server.script = [(401, {}, "no key")]
    with pytest.raises(LLMError, match=r"API key from \$OPENAI_API_KEY"):
        client.complete(MSG, max_tokens=5)


def test_unknown_model_names_the_setting(server):
    client = OpenAIClient(server.url, "gpt-nope", retries=0)
    with pytest.raises(LLMError, match=r"--explainer-model 'gpt-nope' is not served.*fake-model"):
        client.complete(MSG, max_tokens=5)
    server.models.append("other")
    with pytest.raises(ValueError, match="lists 2 models; choose one with --explainer-model"):
        OpenAIClient(server.url)


def test_unreachable_server():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(LLMError, match=r"--explainer openai:URL.*cannot connect"):
        OpenAIClient(f"http://127.0.0.1:{port}/v1", retries=1, backoff=0.01)
    assert time.perf_counter() - start < 5


def test_timeout_is_retried_then_reported(server):
    server.delay = 0.5
    client = OpenAIClient(server.url, "fake-model", timeout=0.1, retries=1, backoff=0.01)
    with pytest.raises(LLMError, match="ReadTimeout"):
        client.complete(MSG, max_tokens=5)
    assert len(server.requests) == 2


def test_make_client_spec_errors():
    with pytest.raises(ValueError, match="--explainer 'gpt4'"):
        make_client("gpt4")
    with pytest.raises(ValueError, match="use hf:MODEL"):
        make_client("openai:")


def test_concurrent_requests(server):
    """The pipeline keeps `concurrency` requests in flight on a server client."""
    from concurrent.futures import ThreadPoolExecutor

    server.delay = 0.2
    client = OpenAIClient(server.url, "fake-model", concurrency=4)
    with ThreadPoolExecutor(client.concurrency) as pool:
        list(pool.map(lambda i: client.complete([{"role": "user", "content": str(i)}],
                                                max_tokens=2), range(8)))  # fmt: skip
    assert server.max_in_flight >= 3


class Counting:
    name, concurrency = "counting", 1

    def __init__(self):
        self.calls = 0

    def complete(self, messages, *, max_tokens, temperature=0.0, logprobs=False, **_):
        self.calls += 1
        return Completion(f"answer {self.calls}", None, 7, 2)


def test_cache_second_run_makes_no_call(tmp_path):
    inner = Counting()
    first = CachedClient(inner, tmp_path)
    a = first.complete(MSG, max_tokens=5)
    b = first.complete([{"role": "user", "content": "other"}], max_tokens=5)
    assert (a.text, b.text, inner.calls) == ("answer 1", "answer 2", 2)
    second = CachedClient(Counting(), tmp_path)
    again = second.complete(MSG, max_tokens=5)
    assert again.text == "answer 1" and again.cached and second.client.calls == 0
    assert second.counts() == {"llm_calls": 0, "cache_hits": 1, "prompt_tokens": 7,
                               "completion_tokens": 2}  # fmt: skip
    # any change of the request is a new key: settings, messages, client identity
    second.complete(MSG, max_tokens=6)
    assert second.client.calls == 1
    stored = list(tmp_path.glob("*/*.json"))
    assert len(stored) == 3 and "request" in json.loads(stored[0].read_text())


def test_binary_answers_capped_and_biased(server, tiny_model_dir):
    """A scorer's request: few answer tokens; with the served model's tokenizer, a logit_bias
    that allows exactly the tokens of well-formed 0/1 lists (and end of text)."""
    from transformers import AutoTokenizer

    from saekit.autointerp.clients import binary_answer_cap

    plain = OpenAIClient(server.url)
    plain.complete(MSG, max_tokens=40, binary_answers=5)
    assert server.requests[-1]["max_tokens"] == binary_answer_cap(5) == 19
    assert "logit_bias" not in server.requests[-1]
    plain.complete(MSG, max_tokens=40)  # free answers keep their limit
    assert server.requests[-1]["max_tokens"] == 40

    biased = OpenAIClient(server.url, answer_tokenizer=str(tiny_model_dir))
    assert biased.name != plain.name  # other answers, other cache entries
    biased.complete(MSG, max_tokens=40, binary_answers=3)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)  # the cap: a well-formed answer's length
    assert server.requests[-1]["max_tokens"] == len(tok.encode("[0, 0, 0]")) < 3 * 3 + 4
    bias = {int(k): v for k, v in server.requests[-1]["logit_bias"].items()}
    assert set(bias.values()) == {100.0}
    assert all(isinstance(v, float) for v in bias.values())  # `transformers serve` needs floats
    for answer in ("[1, 0, 1]", "[0]", "[1, 1, 0, 0, 1]"):
        assert set(tok.encode(answer, add_special_tokens=False)) <= set(bias)
    for i in set(bias) - {tok.eos_token_id}:
        assert set(tok.decode([i])) <= set("[]01, "), tok.decode([i])
    with pytest.raises(ValueError, match="--answer-tokenizer"):
        OpenAIClient(server.url, answer_tokenizer=str(tiny_model_dir / "missing"))
    with pytest.raises(ValueError, match="--answer-tokenizer: only for openai"):
        make_client("hf:smollm2-135m", answer_tokenizer=str(tiny_model_dir))
