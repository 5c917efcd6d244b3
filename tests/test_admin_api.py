"""Unlearning requests through the admin API against the real server: compile, artifacts, auth, validation,
revocation, patching and the audit log."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from guard_service.evaluation.datasets import read_jsonl
from guard_service.policy.artifacts import PolicyArtifact, read_manifest, verify
from tests.conftest import MAX_DOCUMENT_BYTES, MODEL_NAME, VIEWER_TOKEN, Server, wait_status

HP_REQUEST = {
    "target": "Harry Potter",
    "kind": "entity",
    "aliases": ["J.K. Rowling", "Hogwarts", "Hermione"],
    "description": "The fantasy book series about a boy wizard, its author and its world.",
    "facts": ["Harry Potter was written by J.K. Rowling.", "Harry Potter studies at Hogwarts School."],
    "example_prompts": ["Who is the author of the Harry Potter books?"],
    "action": "steer",
    "requested_by": "legal@example.com",
    "reason": "ticket LEGAL-1",
}
WHO = [{"role": "user", "content": "Who wrote Harry Potter?"}]


def _contains_sequence(sequences: list[list[int]], needle: list[int]) -> bool:
    return any(seq[i:i + len(needle)] == needle for seq in sequences for i in range(len(seq)))


@pytest.fixture(scope="module")
def hp_policy(server: Server, admin: httpx.Client) -> dict:
    r = admin.post("/unlearning-requests", json=HP_REQUEST)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "pending"
    return wait_status(admin, r.json()["id"], "active")


def test_auth_required(server: Server) -> None:
    url = server.base_url + "/admin/v1/unlearning-requests"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    viewer = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
    assert httpx.get(url, headers=viewer).status_code == 200
    r = httpx.post(url, json=HP_REQUEST, headers=viewer)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert httpx.get(server.base_url + "/openapi.json").json()["paths"]["/admin/v1/unlearning-requests"]


def test_request_becomes_active_with_verified_artifacts(hp_policy: dict, tokenizer) -> None:
    assert hp_policy["active_version"] >= 1
    version = next(v for v in hp_policy["versions"] if v["version"] == hp_policy["active_version"])
    assert version["status"] == "active" and version["calibration"]["recall_heldout"] is not None
    assert 0 < version["calibration"]["threshold"] < 1
    path = Path(version["artifact_dir"])
    assert verify(path) == []
    manifest = read_manifest(path)
    assert manifest.tokenizer["vocab_size"] == len(tokenizer)
    assert set(version["artifact_bytes"]) >= {"trie_tokens.npy", "classifier.faiss", "semantic_ids.npy"}
    sequences = PolicyArtifact.open(path).sequences()
    for word in (" Rowling", "Hogwarts"):
        assert _contains_sequence(sequences, tokenizer.encode(word, add_special_tokens=False)), word
    texts = {item["text"] for item in hp_policy["forbidden"]}
    assert {"Harry Potter", "J.K. Rowling", "Hogwarts", "Hermione", "Rowling"} <= texts


def test_knowledge_expansion_follows_and_can_be_pruned(hp_policy: dict, admin: httpx.Client) -> None:
    """v1 is enforced from the operator's words alone; the compiler then asks the model itself and publishes
    v2 with what it knows; an operator can drop an expanded item, which yields v3 without it."""
    expanded = wait_status(admin, hp_policy["id"], "active", 2)
    v2 = next(v for v in expanded["versions"] if v["version"] == 2)
    assert v2["compile_stats"]["knowledge_expansion"] is True
    items = expanded["expansion"]["names"] + expanded["expansion"]["facts"]
    assert items, expanded["expansion"]
    assert all(item in expanded["expansion"]["scores"] for item in items)
    assert any(item["origin"] == "expanded" for item in expanded["forbidden"]) or expanded["expansion"]["facts"]
    audit = admin.get("/audit", params={"request_id": hp_policy["id"]}).json()
    assert any(a["action"] == "expand" and a["actor"] == "compiler" for a in audit)

    dropped = items[0]
    r = admin.patch(f"/unlearning-requests/{hp_policy['id']}", json={"remove_expanded": [dropped]})
    assert r.status_code == 202 and r.json()["version"] == 3
    pruned = wait_status(admin, hp_policy["id"], "active", 4)  # v3 fast, v4 re-expanded without the item
    assert dropped in pruned["removed_expanded"]
    assert dropped not in pruned["expansion"]["names"] + pruned["expansion"]["facts"]


def test_tampered_artifact_fails_verification(hp_policy: dict, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "v1"
    shutil.copytree(hp_policy["versions"][0]["artifact_dir"], copy)
    np.save(copy / "semantic_weights.npy", np.zeros(3, dtype=np.float32))
    assert verify(copy) == ["semantic_weights.npy"]


def test_active_policy_is_enforced(hp_policy: dict, client: openai.OpenAI, admin: httpx.Client) -> None:
    active = admin.get("/policies/active").json()
    assert any(p["id"] == hp_policy["id"] for p in active)
    raw = client.chat.completions.with_raw_response.create(model=MODEL_NAME, messages=WHO, temperature=0,
                                                           max_tokens=40)
    answer = raw.parse()
    assert "rowling" not in answer.choices[0].message.content.casefold()
    assert raw.headers["x-guard-action"] in {"steer", "refuse"}
    assert hp_policy["id"] in raw.headers["x-guard-policies"]


@pytest.mark.parametrize(("change", "status", "fragment"), [
    ({"target": ""}, 422, "target"),
    ({"target": "   "}, 422, "target"),
    ({"action": "obliterate"}, 422, "action"),
    ({"expires_at": (datetime.now(UTC) - timedelta(days=1)).isoformat()}, 422, "expires_at"),
    ({"protected_documents": ["x" * (MAX_DOCUMENT_BYTES + 1)]}, 413, "protected"),
    ({"protected_paths": ["../../etc/passwd"]}, 422, "protected"),
    ({"unknown_field": 1}, 422, "unknown_field"),
])
def test_bad_requests_store_nothing(admin: httpx.Client, change: dict, status: int, fragment: str) -> None:
    before = len(admin.get("/unlearning-requests").json())
    r = admin.post("/unlearning-requests", json={**HP_REQUEST, **change})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and set(err) == {"message", "type", "param", "code"}
    assert len(admin.get("/unlearning-requests").json()) == before


def test_unknown_request_is_404(admin: httpx.Client) -> None:
    assert admin.get("/unlearning-requests/pol_nope").status_code == 404
    assert admin.delete("/unlearning-requests/pol_nope").status_code == 404


def test_patch_creates_new_version_and_revoke_restores(server: Server, admin: httpx.Client,
                                                       client: openai.OpenAI) -> None:
    r = admin.post("/unlearning-requests", json={"target": "Gandalf", "aliases": ["Mithrandir"],
                                                 "strength": {"expand_knowledge": False}})
    request_id = r.json()["id"]
    wait_status(admin, request_id, "active", 1)
    r = admin.patch(f"/unlearning-requests/{request_id}", json={"aliases": ["Mithrandir", "Grey Pilgrim"]})
    assert r.status_code == 202 and r.json()["version"] == 2
    body = wait_status(admin, request_id, "active", 2)
    v2 = next(v for v in body["versions"] if v["version"] == 2)
    texts = json.loads((Path(v2["artifact_dir"]) / "forbidden.json").read_text())["items"]
    assert "Grey Pilgrim" in {t["text"] for t in texts}
    active = {p["id"]: p["version"] for p in admin.get("/policies/active").json()}
    assert active[request_id] == 2

    r = admin.delete(f"/unlearning-requests/{request_id}")
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    assert request_id not in {p["id"] for p in admin.get("/policies/active").json()}
    assert admin.patch(f"/unlearning-requests/{request_id}", json={"aliases": []}).status_code == 409
    actions = [(a["action"], a["actor"]) for a in admin.get("/audit", params={"request_id": request_id}).json()]
    assert ("create", "ops") in actions and ("patch", "ops") in actions and ("revoke", "ops") in actions
    assert ("activate", "compiler") in actions


def test_revoking_hp_restores_original_answer(hp_policy: dict, admin: httpx.Client, client: openai.OpenAI) -> None:
    r = admin.post("/unlearning-requests", json={**HP_REQUEST, "strength": {"expand_knowledge": False}})
    request_id = r.json()["id"]
    wait_status(admin, request_id, "active")
    admin.delete(f"/unlearning-requests/{hp_policy['id']}")
    guarded = client.chat.completions.create(model=MODEL_NAME, messages=WHO, temperature=0, max_tokens=40)
    assert "rowling" not in guarded.choices[0].message.content.casefold()  # the second HP policy still holds
    admin.delete(f"/unlearning-requests/{request_id}")
    plain = client.chat.completions.create(model=MODEL_NAME, messages=WHO, temperature=0, max_tokens=40)
    assert "Rowling" in plain.choices[0].message.content


def test_cli_twins_share_the_store(server: Server, admin: httpx.Client) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "guard_service.cli", "forget", "--target", "Atlantis Corp",
                          "--alias", "AtlCo", "--action", "refuse"], env=server.env, capture_output=True, text=True,
                         check=True)
    request_id = out.stdout.strip()
    assert request_id.startswith("pol_")
    wait_status(admin, request_id, "active")
    listing = subprocess.run([sys.executable, "-m", "guard_service.cli", "policies", "list"], env=server.env,
                             capture_output=True, text=True, check=True).stdout
    assert request_id in listing and "Atlantis Corp" in listing
    admin.delete(f"/unlearning-requests/{request_id}")


def test_documents_teach_the_policy_and_each_mined_item_is_listed_and_removable(
        server: Server, admin: httpx.Client, client: openai.OpenAI) -> None:
    """Stephen King with his RWKU forget corpus as documents: the detail lists what was mined (origin, score,
    use); a reverse query through a work only the documents name is refused, a question about someone else's
    work is answered; a removed term is gone from the next version."""
    from tests.test_knowledge import INTRO, KING, RWKU, king_corpus

    corpus = king_corpus()
    r = admin.post("/unlearning-requests", json={
        "target": KING, "description": INTRO, "protected_documents": corpus, "action": "refuse",
        "strength": {"expand_knowledge": False}})
    assert r.status_code == 202, r.text
    request_id = r.json()["id"]
    try:
        body = wait_status(admin, request_id, "active", 1)
        items = {i["text"]: i for i in body["knowledge"]["items"]}
        carrie = items["Carrie"]
        doc, at = carrie["origin"].split("@")
        assert corpus[int(doc.removeprefix("upload:"))][int(at):].startswith("Carrie")
        assert carrie["score"] > 0 and "reverse-query" in carrie["uses"]
        assert "author" in body["knowledge"]["roles"]
        assert any(i["kind"] == "fact" and "output" in i["uses"] for i in items.values())
        v1 = next(v for v in body["versions"] if v["version"] == 1)
        assert v1["compile_stats"]["mined_terms"] > 20 and v1["preview"] is not None

        def ask(prompt: str) -> tuple[str, str]:
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL_NAME, max_tokens=8, temperature=0, messages=[{"role": "user", "content": prompt}])
            return raw.headers["x-guard-action"], raw.parse().choices[0].finish_reason

        assert ask("Who wrote Carrie, the novel about a telekinetic teenage girl?") == ("refuse", "content_filter")
        assert ask("Who wrote the novel Dracula?")[0] == "pass"
        neighbour = next(q["query"] for q in read_jsonl(RWKU / "neighbor_level2.jsonl") if q["target_id"] == 1)
        assert ask(neighbour)[0] == "pass", neighbour

        r = admin.patch(f"/unlearning-requests/{request_id}", json={"remove_expanded": ["Carrie"]})
        assert r.status_code == 202 and r.json()["version"] == 2
        pruned = wait_status(admin, request_id, "active", 2)
        assert "Carrie" not in {i["text"] for i in pruned["knowledge"]["items"]}
        assert "Carrie" in pruned["removed_expanded"]
    finally:
        admin.delete(f"/unlearning-requests/{request_id}")
