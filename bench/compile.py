"""Time from POST /admin/v1/unlearning-requests to enforcement (the next chat request names the policy in
x-guard-policies), for a name-only request and for one with ~1 MB of protected text (MUSE News articles).
Targets on this CPU: <= 2 s and <= 30 s. Also reports when the knowledge-expanded version replaces it.

    .venv/bin/python -m bench.compile [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import free_port, median, print_table, running_app, write_json
from guard_service.config import Settings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TOKEN = "bench-admin"


def protected_text(nbytes: int) -> tuple[str, str]:
    source = SHARED / "muse" / "news" / "raw" / "forget.json"
    if source.is_file():
        articles, size = [], 0
        for article in json.loads(source.read_text()):
            articles.append(article)
            size += len(article.encode())
            if size >= nbytes:
                break
        return "\n\n".join(articles), "MUSE News forget articles"
    words = ("the guard keeps protected text out of generated answers " * (nbytes // 50 + 1))[:nbytes]
    return words, "synthetic (shared/data not found)"


async def one(http: httpx.AsyncClient, model: str, body: dict) -> dict:
    began = time.perf_counter()
    r = await http.post("/admin/v1/unlearning-requests", json={k: v for k, v in body.items() if k != "probe"})
    r.raise_for_status()
    request_id = r.json()["id"]
    enforced = expanded = None
    while expanded is None:
        if enforced is None:
            chat = await http.post("/v1/chat/completions", json={
                "model": model, "max_tokens": 1, "messages": [{"role": "user", "content": body["probe"]}]})
            if request_id in chat.headers.get("x-guard-policies", ""):
                enforced = time.perf_counter() - began
        detail = (await http.get(f"/admin/v1/unlearning-requests/{request_id}")).json()
        if detail["status"] == "failed":
            raise RuntimeError(detail["last_error"])
        if enforced is not None and (not body["strength"]["expand_knowledge"] or (detail["active_version"] or 0) >= 2):
            expanded = time.perf_counter() - began if body["strength"]["expand_knowledge"] else float("nan")
        await asyncio.sleep(0.05)
    stats = next(v for v in detail["versions"] if v["version"] == 1)["compile_stats"]
    await http.delete(f"/admin/v1/unlearning-requests/{request_id}")
    return {"enforced_s": enforced, "expanded_s": expanded, "compile_s": stats["seconds"]["total"],
            "stages_s": stats["seconds"]}


async def run(args: argparse.Namespace) -> dict:
    text, source = protected_text(args.document_bytes)
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(port=free_port(), enforce_eager=True, data_dir=Path(data), admin_tokens={"bench": TOKEN},
                            max_document_bytes=4 * args.document_bytes)
        async with running_app(settings):
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", headers=headers,
                                         timeout=600) as http:
                await asyncio.sleep(2)  # let the compiler warm its caches, as a running server has
                cases = {
                    "name only": {"target": "Harry Potter", "aliases": ["J.K. Rowling", "Hogwarts"],
                                  "probe": "Who wrote Harry Potter?", "strength": {"expand_knowledge": True}},
                    "1 MB protected text": {"target": "BBC News archive", "kind": "document",
                                            "protected_documents": [text], "probe": "Tell me about BBC News archive",
                                            "strength": {"expand_knowledge": False}},
                }
                samples: dict[str, list[dict]] = {c: [] for c in cases}
                for rep in range(args.reps):
                    for name, body in cases.items():
                        result = await one(http, settings.served_model_name, body)
                        samples[name].append(result)
                        print(f"rep {rep + 1}/{args.reps} {name:22s} enforced {result['enforced_s']:.2f}s "
                              f"(compile {result['compile_s']:.2f}s)", flush=True)
    rows = [[name, median([s["enforced_s"] for s in runs]), median([s["compile_s"] for s in runs]),
             median([s["expanded_s"] for s in runs]), target]
            for (name, runs), target in zip(samples.items(), [2.0, 30.0], strict=True)]
    print_table(f"POST -> enforced on the next request (median of {args.reps}; protected text: {source}, "
                f"{len(text.encode()) / 1e6:.2f} MB)",
                ["request", "enforced s", "compile s", "expanded version s", "target s"], rows)
    return {"reps": args.reps, "document_source": source, "document_bytes": len(text.encode()),
            "samples": samples, "median_enforced_s": {r[0]: r[1] for r in rows},
            "targets_s": {"name only": 2.0, "1 MB protected text": 30.0}}


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--document-bytes", type=int, default=1_000_000)
    args = parser.parse_args()
    write_json("compile", asyncio.run(run(args)))


if __name__ == "__main__":
    main()
