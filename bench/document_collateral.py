"""What protecting a knowledge corpus costs the questions around it (issue #24): the first five RWKU targets as
`refuse` policies (name + intro), asked every RWKU level-2 neighbour question of theirs through a real server,
guarded vs unguarded (the audited admin bypass), with no documents, with their forget corpus as documents at the
default provenance span (8 tokens), at the longest (256: the veto practically off), and given as knowledge only
(`strength.documents_as = "knowledge"`: no veto at all). A corpus given as protected documents is knowledge *and*
protected text: the veto stops any 8-token span of it, and Wikipedia-style passages share such spans with
ordinary answers about the same subjects.

    python -m bench.document_collateral
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from bench.common import print_table, write_json
from bench.processes import ADMIN_TOKEN, start_server, stop_server
from guard_service.evaluation import datasets
from guard_service.evaluation.client import EvalClient

ARMS = {"name + intro": (False, 8, "protected"), "+ corpus, provenance span 8 (default)": (True, 8, "protected"),
        "+ corpus, provenance span 256": (True, 256, "protected"),
        "+ corpus as knowledge only (documents_as)": (True, 8, "knowledge")}


def specs(targets: list[dict], corpus: list[dict], documents: bool, span: int, use: str) -> list[dict]:
    out = []
    for t in targets:
        spec = {"target": t["target"], "kind": "entity", "action": "refuse",
                "description": t["intro"].replace(f"Please forget {t['target']}. ", ""),
                "strength": {"expand_knowledge": False, "provenance_min_span": span, "documents_as": use}}
        if documents:
            spec["protected_documents"] = [p["text"] for p in corpus if p["target_id"] == t["target_id"]]
        out.append(spec)
    return out


async def run(url: str) -> dict:
    data = datasets.DEFAULT_DATA / "rwku"
    targets = datasets.read_jsonl(data / "forget_target.jsonl")[:5]
    ids = {t["target_id"] for t in targets}
    corpus = [r for r in datasets.read_jsonl(data / "forget_corpus_passages.jsonl") if r["target_id"] in ids]
    questions = [r["query"] for r in datasets.read_jsonl(data / "neighbor_level2.jsonl") if r["target_id"] in ids]
    out: dict = {"questions": len(questions), "arms": {}}
    async with EvalClient(url, ADMIN_TOKEN, concurrency=32) as client:
        unguarded = await asyncio.gather(*[client.chat(q, guarded=False) for q in questions])
        for arm, (documents, span, use) in ARMS.items():
            made = [await client.submit(s) for s in specs(targets, corpus, documents, span, use)]
            for request_id in made:
                await client.wait_active(request_id)
            guarded = await asyncio.gather(*[client.chat(q, guarded=True) for q in questions])
            changed = [(q, u.text, g.text) for q, u, g in zip(questions, unguarded, guarded, strict=True)
                       if u.text != g.text]
            out["arms"][arm] = {
                "caught": sum(g.caught for g in guarded) / len(questions),
                "changed": len(changed) / len(questions),
                "changed_not_caught": sum(u.text != g.text and not g.caught
                                          for u, g in zip(unguarded, guarded, strict=True)) / len(questions),
                "examples": [{"question": q, "unguarded": u, "guarded": g} for q, u, g in changed[:5]]}
            for request_id in made:
                await client.revoke(request_id)
    return out


def main() -> None:
    server = start_server(Path(tempfile.mkdtemp(prefix="document-collateral-")),
                          {"GUARD_MAX_DOCUMENT_BYTES": str(4 << 20)})
    try:
        result = asyncio.run(run(server.base_url))
    finally:
        stop_server(server)
    result["command"] = "python -m bench.document_collateral"
    print_table(f"RWKU neighbour questions ({result['questions']}), 5 targets, greedy, 64 tokens",
                ["policies", "caught", "answer changed", "changed, not caught"],
                [[arm, f"{a['caught']:.3f}", f"{a['changed']:.3f}", f"{a['changed_not_caught']:.3f}"]
                 for arm, a in result["arms"].items()])
    write_json("document_collateral", result)


if __name__ == "__main__":
    main()
