"""The OpenAI HTTP API, driven through the official `openai` SDK against the real engine."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.conftest import MODEL_NAME, Server

HP = [{"role": "user", "content": "Who wrote Harry Potter?"}]


def test_health_version_models(server: Server, client: openai.OpenAI) -> None:
    assert httpx.get(server.base_url + "/health").json()["status"] == "ok"
    version = httpx.get(server.base_url + "/version").json()
    assert version["vllm"].startswith("0.32")
    assert version["model"] == "SmolLM2-135M-Instruct"
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]


def test_greedy_answer_names_rowling(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL_NAME, messages=HP, temperature=0, max_tokens=40)
    assert "Rowling" in r.choices[0].message.content
    assert r.choices[0].finish_reason in {"stop", "length"}


def test_stream_equals_non_stream(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL_NAME, messages=HP, temperature=0, max_tokens=48)
    full = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage


def test_completions_stream_equals_non_stream(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL_NAME, prompt="The capital of France is", temperature=0, max_tokens=24)
    full = client.completions.create(**kwargs)
    text = "".join(c.choices[0].text for c in client.completions.create(**kwargs, stream=True) if c.choices)
    assert text == full.choices[0].text and text


def test_n_two_choices(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL_NAME, messages=HP, temperature=1.0, max_tokens=16, n=2, seed=7)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(c.message.content for c in r.choices)
    assert 2 <= r.usage.completion_tokens <= 32
    streamed = list(client.chat.completions.create(model=MODEL_NAME, messages=HP, temperature=1.0, max_tokens=16,
                                                   n=2, seed=7, stream=True))
    texts = {0: "", 1: ""}
    for c in streamed:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
    assert all(texts.values())


def test_seed_makes_sampling_reproducible(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL_NAME, messages=HP, temperature=1.0, max_tokens=20, seed=1234)
    a = client.chat.completions.create(**kwargs).choices[0].message.content
    b = client.chat.completions.create(**kwargs).choices[0].message.content
    assert a == b


def test_stop_sequence(client: openai.OpenAI) -> None:
    base = client.completions.create(model=MODEL_NAME, prompt="1, 2, 3, 4,", temperature=0, max_tokens=20)
    assert " 6" in base.choices[0].text
    r = client.completions.create(model=MODEL_NAME, prompt="1, 2, 3, 4,", temperature=0, max_tokens=20, stop=[" 6"])
    assert r.choices[0].finish_reason == "stop"
    assert " 6" not in r.choices[0].text
    assert base.choices[0].text.startswith(r.choices[0].text)


def test_usage_matches_tokenizer(client: openai.OpenAI, tokenizer) -> None:
    r = client.chat.completions.create(model=MODEL_NAME, messages=HP, temperature=0, max_tokens=12, logprobs=True,
                                       top_logprobs=3)
    expected_prompt = tokenizer.apply_chat_template(HP, add_generation_prompt=True, tokenize=True)
    if not isinstance(expected_prompt, list):
        expected_prompt = expected_prompt["input_ids"]
    assert r.usage.prompt_tokens == len(expected_prompt)
    assert r.usage.completion_tokens == len(r.choices[0].logprobs.content)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 for t in r.choices[0].logprobs.content)
    prompt = "Once upon a time"
    c = client.completions.create(model=MODEL_NAME, prompt=prompt, temperature=0, max_tokens=7)
    assert c.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))
    assert c.usage.completion_tokens == 7 and c.choices[0].finish_reason == "length"


def test_prompt_list_gives_one_choice_each(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL_NAME, prompt=["The capital of France is", "Water is made of"],
                                  temperature=0, max_tokens=6)
    assert [c.index for c in sorted(r.choices, key=lambda c: c.index)] == [0, 1]
    single = client.completions.create(model=MODEL_NAME, prompt="Water is made of", temperature=0, max_tokens=6)
    assert next(c for c in r.choices if c.index == 1).text == single.choices[0].text


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        ({"model": "no-such-model", "messages": HP}, 404, "model"),
        ({"model": MODEL_NAME, "messages": []}, 400, "messages"),
        ({"model": MODEL_NAME, "messages": "hello"}, 400, "messages"),
        ({"model": MODEL_NAME, "messages": HP, "temperature": "hot"}, 400, "temperature"),
        ({"model": MODEL_NAME, "messages": HP, "max_tokens": 0}, 400, "max_tokens"),
        ({"model": MODEL_NAME, "messages": HP, "max_tokens": 100000}, 400, "max_tokens"),
        ({"model": MODEL_NAME, "messages": [{"role": "user", "content": "word " * 5000}]}, 400, "messages"),
        ({"model": MODEL_NAME, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    ],
)
def test_chat_errors(server: Server, body, status: int, param: str | None) -> None:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server.v1 + "/chat/completions", headers={"content-type": "application/json"}, timeout=60,
                   **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param


def test_completion_errors_through_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hi")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt="x " * 4000, max_tokens=5)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL_NAME, prompt=[], max_tokens=5)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL_NAME, prompt=[[10, 99999999]], max_tokens=5)
    # the server survived all of it
    assert client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=3).choices[0].text is not None


def test_eight_concurrent_requests(server: Server) -> None:
    async def run() -> list:
        aclient = openai.AsyncOpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=180)
        questions = [f"Name one fact about the number {i}." for i in range(8)]
        return await asyncio.gather(*[aclient.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": q}], temperature=0, max_tokens=24)
            for q in questions])

    results = asyncio.run(run())
    assert len(results) == 8
    assert all(r.choices[0].message.content and r.usage.completion_tokens > 0 for r in results)


def test_disconnect_mid_stream_aborts(server: Server, client: openai.OpenAI) -> None:
    def unfinished() -> int:
        return httpx.get(server.base_url + "/health").json()["unfinished_requests"]

    stream = client.chat.completions.create(model=MODEL_NAME, messages=HP, temperature=0, max_tokens=1500,
                                            stream=True, extra_body={"ignore_eos": True})
    for got, _ in enumerate(stream, start=1):
        if got == 3:
            break
    assert unfinished() >= 1  # still generating: 1500 tokens take far longer than this test waits
    stream.close()
    deadline = time.monotonic() + 10
    while unfinished() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert unfinished() == 0


def test_disconnect_before_a_plain_response_aborts_cleanly(server: Server) -> None:
    """A client that gives up on a non-streaming request: the engine stops, and nothing is logged as a failure."""
    body = {"model": MODEL_NAME, "messages": HP, "temperature": 0, "max_tokens": 1500, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.v1 + "/chat/completions", json=body, timeout=3)
    deadline = time.monotonic() + 10
    while httpx.get(server.base_url + "/health").json()["unfinished_requests"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert httpx.get(server.base_url + "/health").json()["unfinished_requests"] == 0
    assert "unhandled error" not in server.log_tail(200)
