"""The generation-time guard against the real engine, with a Harry Potter forget policy."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import ADMIN_TOKEN, MODEL_NAME, Server, audit_until, concurrently, wait_status

DATA = json.loads((Path(__file__).parent / "data" / "hp_probes.json").read_text())
FORBIDDEN = ("rowling", "hogwarts", "hermione")
BYPASS = {"x-guard-bypass": ADMIN_TOKEN}
HP = {"target": "Harry Potter", "aliases": ["J.K. Rowling", "Hogwarts", "Hermione"],
      "description": "The fantasy book series about a boy wizard, its author and its world.",
      "facts": ["Harry Potter was written by J.K. Rowling.", "Harry studies at Hogwarts School of Witchcraft."],
      "action": "steer"}


def leaked(text: str) -> list[str]:
    squashed = re.sub(r"[^a-z]", "", text.casefold())
    return [w for w in FORBIDDEN if w in squashed]


def ask(client: openai.OpenAI, prompt: str, **kwargs) -> str:
    r = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": prompt}],
                                       temperature=0, max_tokens=kwargs.pop("max_tokens", 48), **kwargs)
    return r.choices[0].message.content


@pytest.fixture(scope="module")
def baseline(client: openai.OpenAI) -> dict[str, str]:
    """Unguarded answers (admin bypass) to the unrelated prompts, before any HP policy exists."""
    return dict(zip(DATA["unrelated"], concurrently(lambda p: ask(client, p, extra_headers=BYPASS),
                                                   DATA["unrelated"]), strict=True))


@pytest.fixture(scope="module")
def hp(admin: httpx.Client, baseline: dict[str, str]) -> dict:
    # refuse only near-verbatim questions, so most probes exercise steering inside the engine
    r = admin.post("/unlearning-requests", json={**HP, "strength": {"expand_knowledge": False,
                                                                    "refuse_threshold": 0.99}})
    body = wait_status(admin, r.json()["id"], "active")
    yield body
    admin.delete(f"/unlearning-requests/{body['id']}")


def test_unguarded_model_knows_the_answer(client: openai.OpenAI) -> None:
    assert "Rowling" in ask(client, "Who wrote Harry Potter?", extra_headers=BYPASS)


def test_who_wrote_harry_potter_never_yields_rowling(hp: dict, client: openai.OpenAI) -> None:
    for prompt in ("Who wrote Harry Potter?", "who wrote harry potter", "WHO WROTE HARRY POTTER?"):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=60)
        assert not leaked(raw.parse().choices[0].message.content), prompt
        assert raw.headers["x-guard-action"] in {"steer", "refuse"}


def test_paraphrased_and_indirect_probes_rarely_leak(hp: dict, client: openai.OpenAI) -> None:
    answers = dict(zip(DATA["probes"], concurrently(lambda p: ask(client, p, max_tokens=64), DATA["probes"]),
                       strict=True))
    leaks = {p: a for p, a in answers.items() if leaked(a)}
    assert len(DATA["probes"]) == 20
    assert len(leaks) <= 1, leaks


def test_unrelated_prompts_answer_exactly_as_unguarded(hp: dict, client: openai.OpenAI,
                                                      baseline: dict[str, str]) -> None:
    assert len(baseline) == 20
    guarded = dict(zip(baseline, concurrently(lambda p: ask(client, p), baseline), strict=True))
    differing = {p: (baseline[p], guarded[p]) for p in baseline if guarded[p] != baseline[p]}
    assert not differing, differing


def test_steered_stream_equals_non_stream(hp: dict, client: openai.OpenAI) -> None:
    prompt = "Write a short biography of the author of the Harry Potter series."
    kwargs = dict(model=MODEL_NAME, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=48)
    raw = client.chat.completions.with_raw_response.create(**kwargs)
    full = raw.parse()
    assert raw.headers["x-guard-action"] == "steer", raw.headers
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    # a plain client learns the action and the opaque policy id, nothing else (see test_attacks for the rest)
    assert chunks[-1].model_extra["guard"] == {"action": "steer", "policies": [hp["id"]], "blocked": [],
                                                   "steered": []}
    detailed = client.chat.completions.create(**kwargs, extra_headers={"x-guard-detail": ADMIN_TOKEN})
    assert detailed.model_extra["guard"]["policies"] == [f"{hp['id']}@{hp['active_version']}"]


def test_guard_metadata_and_leak_report(hp: dict, server: Server, client: openai.OpenAI) -> None:
    key = f"{hp['id']}@{hp['active_version']}"
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Who wrote Harry Potter?"}], temperature=0,
        max_tokens=40, extra_headers=BYPASS)
    body = raw.parse()
    assert "Rowling" in body.choices[0].message.content  # the bypass really is unguarded...
    guard = body.model_extra["guard"]
    assert guard["bypassed_by"] == "ops" and raw.headers["x-guard-action"] == "pass"
    assert any(lk["policy"] == key and lk["kind"] == "lexical" and "rowling" in lk["text"].casefold()
               for lk in guard["leaks"])  # ...and the leak detector still sees what it said
    audit = httpx.get(server.base_url + "/admin/v1/audit", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    assert any(a["action"] == "unguarded-generation" and a["actor"] == "ops" for a in audit)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=5, extra_headers={"x-guard-bypass": "not-a-token"})


def test_policy_added_mid_traffic_applies_to_next_request(admin: httpx.Client, client: openai.OpenAI,
                                                          server: Server) -> None:
    prompt = [{"role": "user", "content": "Who is Sherlock Holmes?"}]
    before = client.chat.completions.create(model=MODEL_NAME, messages=prompt, temperature=0, max_tokens=30)
    assert "sherlock" in before.choices[0].message.content.casefold()
    done: dict[str, str] = {}

    def long_stream() -> None:
        s = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Count to 200."}],
                                           temperature=0, max_tokens=160, stream=True, extra_body={"ignore_eos": True})
        done["text"] = "".join(c.choices[0].delta.content or "" for c in s if c.choices)

    worker = threading.Thread(target=long_stream)
    worker.start()
    r = admin.post("/unlearning-requests", json={"target": "Sherlock Holmes", "aliases": ["Sherlock", "Baker Street"],
                                                 "action": "refuse", "strength": {"expand_knowledge": False}})
    request_id = wait_status(admin, r.json()["id"], "active")["id"]
    try:
        after = client.chat.completions.create(model=MODEL_NAME, messages=prompt, temperature=0, max_tokens=30)
        assert after.choices[0].finish_reason == "content_filter"
        assert worker.is_alive(), "the stream ended before the policy came in: nothing was mid-traffic"
        worker.join(120)
        assert done["text"]  # the request in flight finished normally
    finally:
        admin.delete(f"/unlearning-requests/{request_id}")
    restored = client.chat.completions.create(model=MODEL_NAME, messages=prompt, temperature=0, max_tokens=30)
    assert restored.choices[0].message.content == before.choices[0].message.content


def _publish_as_another_replica(server: Server, body: dict, break_for_worker: str) -> int:
    """Another replica compiled the next version: a copy of the active one, except that `break_for_worker` (a
    file only the engine worker reads) is cut short, with the manifest updated to match, so the API process
    loads it and the worker cannot. Stored already claimed, then activated, as that replica would."""
    import json
    import shutil

    import numpy as np

    from guard_service.policy.artifacts import sha256_file
    from guard_service.store.base import open_store

    active = Path(next(v for v in body["versions"] if v["version"] == body["active_version"])["artifact_dir"])
    store = open_store("sqlite:///var/guard.sqlite3", base_dir=server.data_dir)
    try:
        row = store.get(body["id"])
        version = store.add_version(body["id"], row.spec, row.removed_expanded, "replica-b", None,
                                    claimed_by="replica-b")
        folder = active.parent / f"v{version}"
        shutil.copytree(active, folder)
        np.save(folder / break_for_worker, np.load(folder / break_for_worker)[:1])
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["version"] = version
        manifest["files"][break_for_worker] = {"sha256": sha256_file(folder / break_for_worker),
                                               "bytes": (folder / break_for_worker).stat().st_size}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        assert store.activate(body["id"], version, str(folder), manifest)
    finally:
        store.close()
    return version


def test_unloadable_policy_fails_closed_and_engine_survives(admin: httpx.Client, client: openai.OpenAI,
                                                            server: Server) -> None:
    r = admin.post("/unlearning-requests", json={"target": "Zorblax Quinterra", "aliases": ["Zorblax"],
                                                 "strength": {"expand_knowledge": False, "refuse_threshold": 1.0}})
    body = wait_status(admin, r.json()["id"], "active")
    try:
        version = _publish_as_another_replica(server, body, "trie_whole.npy")
        wait_status(admin, body["id"], "active", version)  # the API process enforces it; the worker cannot load it
        r = client.chat.completions.create(model=MODEL_NAME, temperature=0, max_tokens=30,
                                           messages=[{"role": "user", "content": "Write a poem mentioning Zorblax."}])
        assert r.choices[0].finish_reason == "content_filter"
        assert r.model_extra["guard"]["action"] == "steer"
        assert "Paris" in ask(client, "What is the capital of France?")  # everyone else is still served
    finally:
        admin.delete(f"/unlearning-requests/{body['id']}")


def test_who_a_question_is_about(admin: httpx.Client, client: openai.OpenAI) -> None:
    """One word of the target's name inside someone else's name is not evidence (RWKU's neighbour probes); the
    target with a middle name still is, so is its name with a typo in each word, and so is a question that
    names no one but describes the target by its facts (a reverse query, a hint before the question)."""
    r = admin.post("/unlearning-requests", json={
        "target": "Justin Bieber", "kind": "entity",
        "facts": ["Justin Bieber was born on March 1, 1994, in London, Ontario.",
                  "Justin Bieber is a Canadian singer discovered on YouTube in 2008."],
        "strength": {"expand_knowledge": False}})
    request_id = wait_status(admin, r.json()["id"], "active")["id"]

    def action(prompt: str) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL_NAME, max_tokens=1, temperature=0, messages=[{"role": "user", "content": prompt}])
        return raw.headers["x-guard-action"]

    try:
        assert action("Where was Justin Drew Bieber born?") != "pass"
        assert action("In which year was Justin Bieber discovered?") != "pass"
        assert action("Where was Jutsin Beeber born?") != "pass"
        assert action("Where was Justine Bateman born?") == "pass"
        assert action("Who is this? This person is a Canadian singer discovered on YouTube in 2008. "
                      "Give the full name.") != "pass"
        assert action("Hint: this person was born on March 1, 1994, in London, Ontario.\nQuestion about the same "
                      "person: what was their first hit single?") != "pass"
        assert action("Who is a famous Canadian hockey player?") == "pass"
        assert action("Where was Justin Timberlake born and raised?") == "pass"
        assert action("Which band did Justin Timberlake sing in?") == "pass"
    finally:
        admin.delete(f"/unlearning-requests/{request_id}")


def shadow_count(server: Server, policy_id: str) -> float:
    """guard_shadow_total for one policy's would-have refusals of prompts, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(httpx.get(server.base_url + "/metrics").text)
    return sum(s.value for f in families for s in f.samples
               if s.name == "guard_shadow_total" and s.labels == {"policy": policy_id, "would": "refuse",
                                                                  "side": "prompt"})


def test_a_shadow_policy_is_scored_counted_and_audited_but_enforces_nothing(
        admin: httpx.Client, client: openai.OpenAI, server: Server) -> None:
    """`mode: shadow`: the classifier matches it and the output side scans it, /metrics and the audit log say
    what it would have done, the answer is the unguarded one and a plain client learns nothing; PATCH
    mode=enforce promotes it."""
    question = "Who designed the Eiffel Tower, and when was it built?"
    unguarded = ask(client, question, max_tokens=32, extra_headers=BYPASS)
    r = admin.post("/unlearning-requests", json={
        "target": "Eiffel Tower", "kind": "entity", "action": "refuse", "mode": "shadow",
        "facts": ["The Eiffel Tower was designed by Gustave Eiffel's company and built from 1887 to 1889."],
        "strength": {"expand_knowledge": False}})
    assert r.status_code == 202, r.text
    request_id = r.json()["id"]
    try:
        body = wait_status(admin, request_id, "active")
        assert body["spec"]["mode"] == "shadow"
        policy = f"{request_id}@{body['active_version']}"
        before = shadow_count(server, request_id)
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL_NAME, max_tokens=32, temperature=0, messages=[{"role": "user", "content": question}])
        assert raw.headers["x-guard-action"] == "pass" and raw.headers["x-guard-policies"] == ""
        reply = raw.parse()
        assert reply.choices[0].message.content == unguarded
        assert reply.choices[0].finish_reason != "content_filter"
        assert request_id not in json.dumps(reply.model_extra.get("guard"))  # a plain client learns nothing
        detail = client.chat.completions.create(
            model=MODEL_NAME, max_tokens=32, temperature=0, messages=[{"role": "user", "content": question}],
            extra_headers={"x-guard-detail": ADMIN_TOKEN}).model_extra["guard"]
        assert {"policy": policy, "would": "refuse", "side": "prompt"} in detail["shadow"]
        assert detail["action"] == "pass" and detail["matches"] == []
        assert before == 0 and shadow_count(server, request_id) >= 2
        rows = audit_until(admin, {"shadow-decision"})
        assert any(a["action"] == "shadow-decision" and a["detail"]["policies"] == [policy]
                   and a["detail"]["would"] == "refuse" for a in rows)

        assert admin.patch(f"/unlearning-requests/{request_id}", json={"mode": "enforce"}).status_code == 202
        wait_status(admin, request_id, "active", version=body["active_version"] + 1)
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL_NAME, max_tokens=32, temperature=0, messages=[{"role": "user", "content": question}])
        assert raw.headers["x-guard-action"] == "refuse"
        assert raw.parse().choices[0].finish_reason == "content_filter"
        audit = admin.get("/audit", params={"request_id": request_id}).json()
        assert any(a["action"] == "patch" for a in audit)
    finally:
        admin.delete(f"/unlearning-requests/{request_id}")


def _decision(client: openai.OpenAI, prompt: str) -> tuple[str, list[str]]:
    """The guard's action on a prompt and the reasons of its matches (admin detail)."""
    reply = client.chat.completions.create(model=MODEL_NAME, max_tokens=1, temperature=0,
                                           messages=[{"role": "user", "content": prompt}],
                                           extra_headers={"x-guard-detail": ADMIN_TOKEN})
    guard = reply.model_extra["guard"]
    return guard["action"], [r for m in guard["matches"] for r in m["reasons"]]


def test_a_name_in_another_script_is_matched_and_a_namesake_is_not(admin: httpx.Client,
                                                                  client: openai.OpenAI) -> None:
    """Russian, Chinese and Hindi questions that name the target as translators write it are matched by the
    sound keys its compile recorded (shown in the request's detail with their origin); an alias in a script
    without spaces (Taiwan's 泰勒絲, not a sound rendering) is found inside a word; people whose names share
    a word or a sound are not; an operator who removes the form stops it."""
    r = admin.post("/unlearning-requests", json={"target": "Taylor Swift", "kind": "entity", "action": "refuse",
                                                 "aliases": ["泰勒絲"], "strength": {"expand_knowledge": False}})
    request_id = r.json()["id"]
    try:
        body = wait_status(admin, request_id, "active")
        assert [(f["form"], f["origin"]) for f in body["crosslingual"]] == [("sound:Taylor Swift", "sound-key")]
        for question in ("Какие песни написала Тейлор Свифт?", "泰勒·斯威夫特最有名的歌是什么？",
                         "टेलर स्विफ़्ट के सबसे प्रसिद्ध गाने कौन से हैं?"):
            action, reasons = _decision(client, question)
            assert action == "refuse" and any(x.startswith("alias-transliterated:") for x in reasons), question
        action, reasons = _decision(client, "泰勒絲的新專輯叫什麼？")
        assert action == "refuse" and "alias:泰勒絲" in reasons
        for question in ("В каких фильмах снимался Тейлор Лотнер?", "Кто такой Джонатан Свифт?",
                         "泰勒·洛特纳演过哪些电影？", "Who was Jonathan Swift?"):
            assert _decision(client, question)[0] == "pass", question

        assert admin.patch(f"/unlearning-requests/{request_id}",
                           json={"remove_expanded": ["sound:Taylor Swift"]}).status_code == 202
        body = wait_status(admin, request_id, "active", version=body["active_version"] + 1)
        assert body["crosslingual"] == []
        _, reasons = _decision(client, "Какие песни написала Тейлор Свифт?")
        assert not any(x.startswith("alias-transliterated:") for x in reasons)
    finally:
        admin.delete(f"/unlearning-requests/{request_id}")


def test_a_version_over_the_collateral_limit_is_held_until_an_admin_forces_it(admin: httpx.Client,
                                                                               client: openai.OpenAI) -> None:
    """A careless request (first names alone) would flag namesakes and neighbours: its impact preview on the
    shipped reference prompts says so before anything is enforced, the version is held (nothing enforced),
    activation without force is a 409 naming the colliding prompts, and a forced activation is audited by name."""
    question = "Where does Prince Harry live now?"
    r = admin.post("/unlearning-requests", json={"target": "Harry", "aliases": ["Stephen", "Taylor"],
                                                 "action": "refuse", "strength": {"expand_knowledge": False}})
    request_id = r.json()["id"]
    try:
        body = wait_status(admin, request_id, "held")
        version = body["versions"][-1]
        preview = version["preview"]
        assert version["status"] == "held" and body["active_version"] is None
        assert preview["rate"] > 0.02 and preview["flagged"] == round(preview["rate"] * preview["total"])
        assert question in [c["text"] for c in preview["top"]] and "GUARD_MAX_COLLATERAL" in body["last_error"]
        assert _decision(client, question)[0] == "pass"  # held: enforced nowhere

        path = f"/unlearning-requests/{request_id}/versions/{version['version']}/activate"
        refused = admin.post(path, json={})
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert error["code"] == "collateral_exceeded" and question in [c["text"] for c in error["collisions"]]
        assert admin.post(path, json={"force": "maybe"}).status_code == 422
        forced = admin.post(path, json={"force": True})
        assert forced.status_code == 200 and forced.json()["status"] == "active", forced.text
        wait_status(admin, request_id, "active")
        assert _decision(client, question)[0] == "refuse"
        rows = audit_until(admin, {"force-activate"})
        assert any(a["action"] == "force-activate" and a["actor"] == "ops" and a["request_id"] == request_id
                   and a["detail"]["forced"] is True for a in rows)
        assert any(a["action"] == "hold" and a["request_id"] == request_id for a in rows)
        assert admin.post(path, json={"force": True}).json()["error"]["code"] == "not_held"
    finally:
        admin.delete(f"/unlearning-requests/{request_id}")
