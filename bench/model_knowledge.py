"""The served model as a knowledge source (issue #24, item 2), measured on a model that knows its targets and on
one that does not: the ten TOFU forget05 authors as `refuse` policies (the name alone), knowledge expansion on,
through a real server serving the embedded SmolLM2-135M and then the `tofu` fixture (the same model fine-tuned on
those authors). Expansion asks the served model for each author's works; a work it names is kept where the
request's documents hold it, or, without documents, when the sentence embedder puts it near the target.

Per served model and arm (no documents / the author's 20 TOFU answers as documents): works the model named, how
many are the author's real titles (a title quoted in its TOFU answers, matched casefolded either way round), how
many the policy kept (knowledge items of origin `model`) and how many of those are real; and the reverse query
that only such a work can answer ("Who wrote '<title>'?", every real title) caught by the guard.

    .venv/bin/python -m bench.model_knowledge
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import print_table, write_json
from bench.processes import ADMIN_TOKEN, start_server, stop_server
from guard_service.evaluation import datasets
from guard_service.evaluation.client import EvalClient

MODELS = {"embedded SmolLM2-135M": {}, "tofu fixture": {"GUARD_FIXTURE": "tofu"}}
_TITLE = re.compile(r"[\"“]([^\"”]{3,80}?)[.,]?[\"”]|(?<!\w)['‘]([^'‘’]{3,80}?)[.,]?['’](?!\w)")


def titles(rows: list[dict]) -> set[str]:
    return {(a or b).strip() for r in rows for a, b in _TITLE.findall(r["answer"])}


def real(work: str, truth: set[str]) -> bool:
    w = work.casefold().strip(" .'\"")
    return any(w == t.casefold() or (len(w) >= 8 and (w in t.casefold() or t.casefold() in w)) for t in truth)


async def expanded(http: httpx.AsyncClient, request_id: str, wait_s: float = 600) -> dict:
    """The request's detail once its expanded version (v2) is the one enforced."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        info = (await http.get(f"/admin/v1/unlearning-requests/{request_id}")).raise_for_status().json()
        if info["status"] == "failed":
            raise RuntimeError(info["last_error"])
        if (info["active_version"] or 0) >= 2 and info["enforcement"]["state"] == "enforced" \
                and info["enforcement"]["version"] >= 2:
            return info
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{request_id}: no expanded version after {wait_s:.0f}s")


async def measure(url: str, authors: list[tuple[str, list[dict]]]) -> dict:
    out: dict = {}
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with EvalClient(url, ADMIN_TOKEN, concurrency=16) as client, \
            httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
        for arm, with_docs in (("name only", False), ("name + TOFU answers as documents", True)):
            named = named_real = kept = kept_real = 0
            made, examples = [], []
            for name, rows in authors:
                spec = {"target": name, "action": "refuse", "strength": {"expand_knowledge": True}}
                if with_docs:
                    spec["protected_documents"] = [r["answer"] for r in rows]
                made.append(await client.submit(spec))
            details = [await expanded(http, rid) for rid in made]
            probes = []
            for (name, rows), detail in zip(authors, details, strict=True):
                truth = titles(rows)
                works = list((detail["expansion"] or {}).get("works", {}))
                model_items = [i["text"] for i in detail["knowledge"]["items"] if i["origin"] == "model"] \
                    if detail["knowledge"] else []
                named += len(works)
                named_real += sum(real(w, truth) for w in works)
                kept += len(model_items)
                kept_real += sum(real(w, truth) for w in model_items)
                examples.append({"author": name, "named": works[:6], "kept": model_items[:6],
                                 "real titles": sorted(truth)[:6]})
                probes += [f"Who wrote \"{t}\"?" for t in sorted(truth)]
            answers = await asyncio.gather(*[client.chat(p, guarded=True, max_tokens=16) for p in probes])
            out[arm] = {"works named": named, "named that are real titles": named_real, "kept": kept,
                        "kept that are real titles": kept_real,
                        "reverse queries caught": sum(a.caught for a in answers) / max(1, len(probes)),
                        "reverse queries": len(probes), "examples": examples}
            for request_id in made:
                await client.revoke(request_id)
    return out


def main() -> None:
    authors = datasets.tofu_authors(datasets.tofu(datasets.DEFAULT_DATA, datasets.TOFU_FORGET_SPLIT))
    result: dict = {"authors": len(authors), "models": {}}
    # the fixture's merged weights (a few seconds; nothing is downloaded)
    subprocess.run([sys.executable, "-m", "guard_service.cli", "prepare-model", "--fixture", "tofu"], check=True)
    for model, env in MODELS.items():
        server = start_server(Path(tempfile.mkdtemp(prefix="model-knowledge-")), env)
        try:
            result["models"][model] = asyncio.run(measure(server.base_url, authors))
        finally:
            stop_server(server)
    result["command"] = "python -m bench.model_knowledge"
    keys = ["works named", "named that are real titles", "kept", "kept that are real titles",
            "reverse queries caught"]
    rows = [[f"{model}: {arm}", *[f"{v[k]:.3f}" if isinstance(v[k], float) else v[k] for k in keys]]
            for model, arms in result["models"].items() for arm, v in arms.items()]
    print_table("Works the served model names for the ten TOFU forget05 authors", ["model: arm", *keys], rows)
    write_json("model_knowledge", result)


if __name__ == "__main__":
    main()
