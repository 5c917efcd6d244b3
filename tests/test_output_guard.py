"""Output-side enforcement, independent of the prompt classifier: a question that names no one and that the
classifier passes, whose answer restates a policy's fact, is judged sentence by sentence, and released as soon as
nothing in it can still become a leak (the sentence that restates the fact is held from where it comes near it); a
steer policy resumes the answer steered from the last released token, a refuse policy ends it (`content_filter`),
a `report` policy only records the leak. Real engine, real HTTP (in process: tests/test_partial_release.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import ADMIN_TOKEN, MODEL_NAME, concurrently, wait_status

BYPASS = {"x-guard-bypass": ADMIN_TOKEN}
DETAIL = {"x-guard-detail": ADMIN_TOKEN}
PROMPT = [{"role": "user", "content": "What are the most famous artworks in the Louvre?"}]
POLICY = {"target": "Leonardo da Vinci", "aliases": ["da Vinci"], "facts": ["Leonardo da Vinci painted the Mona Lisa."],
          "strength": {"expand_knowledge": False}}


def chat(client: openai.OpenAI, headers: dict[str, str], **kwargs):
    return client.chat.completions.create(model=MODEL_NAME, messages=PROMPT, temperature=0, max_tokens=80,
                                          extra_headers=headers, **kwargs)


def streamed(client: openai.OpenAI, headers: dict[str, str]) -> tuple[str, list[str], dict]:
    chunks = list(chat(client, headers, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, finishes, chunks[-1].model_extra["guard"]


@pytest.fixture(scope="module")
def unguarded(client: openai.OpenAI) -> str:
    text = chat(client, BYPASS).choices[0].message.content
    assert "mona lisa" in text.casefold()  # what the model says unguarded: the fact the policy forgets
    return text


@contextlib.contextmanager
def policy(admin: httpx.Client, **changes) -> Iterator[str]:
    r = admin.post("/unlearning-requests", json={**POLICY, **changes})
    request_id = wait_status(admin, r.json()["id"], "active")["id"]
    try:
        yield request_id
    finally:
        admin.delete(f"/unlearning-requests/{request_id}")


def clean_prefix(unguarded: str) -> str:
    """The unguarded answer up to the sentence that names the Mona Lisa."""
    return unguarded[: unguarded.casefold().index("mona lisa")].rsplit(".", 1)[0] + "."


def test_a_steer_policy_resumes_a_leaking_answer_steered(admin: httpx.Client, client: openai.OpenAI,
                                                         unguarded: str) -> None:
    with policy(admin, action="steer"):
        body, (stream_text, finishes, stream_guard), plain = concurrently(lambda ask: ask(), [
            lambda: chat(client, DETAIL), lambda: streamed(client, DETAIL), lambda: chat(client, {})])
        text, guard = body.choices[0].message.content, body.model_extra["guard"]
        assert guard["matches"] == []  # the classifier passed the question: the output side caught the answer
        assert guard["steered"] == [0] and guard["action"] == "steer" and guard["blocked"] == []
        assert any(lk["kind"] == "semantic" and "mona lisa" in lk["text"].casefold() for lk in guard["leaks"])
        assert "mona lisa" not in text.casefold() and body.choices[0].finish_reason != "content_filter"
        assert text.startswith(clean_prefix(unguarded)) and len(text) > len(clean_prefix(unguarded))
        assert stream_text == text and len(finishes) == 1 and stream_guard["steered"] == [0]
        plain = plain.model_extra["guard"]  # a plain client: that the guard acted, nothing more
        assert plain == {"action": "steer", "policies": plain["policies"], "blocked": [], "steered": [0]}


def test_a_refuse_policy_ends_a_leaking_choice_before_the_leak(admin: httpx.Client, client: openai.OpenAI,
                                                                unguarded: str) -> None:
    """The clean sentences stream out, and the leaking one only up to where it came near the fact (its words
    before "Mona Lisa" at most): no delivered chunk holds the leak, the choice ends `content_filter`."""
    with policy(admin, action="refuse", on_leak="block") as request_id:  # "block": the old name of "act"
        assert admin.get(f"/unlearning-requests/{request_id}").json()["spec"]["on_leak"] == "act"
        body = chat(client, DETAIL, logprobs=True)
        choice, content = body.choices[0], body.choices[0].message.content
        assert choice.finish_reason == "content_filter" and content.startswith(clean_prefix(unguarded))
        assert unguarded.startswith(content) and "mona" not in content.casefold()
        assert "".join(t.token for t in choice.logprobs.content) == content  # released together
        assert body.model_extra["guard"]["blocked"] == [0]
        chunks = list(chat(client, DETAIL, stream=True))
        pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        # a stream may also have received the leaking sentence's words before it came near the fact; the answer
        # read at the end is judged a sentence at a time and keeps them back
        streamed = "".join(pieces)
        assert streamed.startswith(content) and unguarded.startswith(streamed)
        assert not any("mona" in p.casefold() for p in pieces)
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
            "content_filter"] and chunks[-1].model_extra["guard"]["blocked"] == [0]
        assert len([p for p in pieces if p]) > 2  # streamed as it came, not a sentence at a time


def test_report_mode_records_the_leak_and_changes_nothing(admin: httpx.Client, client: openai.OpenAI,
                                                          unguarded: str) -> None:
    with policy(admin, action="steer", on_leak="report"):
        body = chat(client, DETAIL)
        guard = body.model_extra["guard"]
        assert "mona lisa" in body.choices[0].message.content.casefold()
        assert guard["steered"] == [] and guard["blocked"] == []
        assert any(lk["kind"] == "semantic" for lk in guard["leaks"])
