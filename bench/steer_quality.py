"""Are steered answers still fluent? For the Harry Potter probes, the steered answer's perplexity under the
unguarded model, next to the unguarded answer's own perplexity, and how many steered answers leak.

    .venv/bin/python -m bench.steer_quality
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import tempfile
import uuid
from pathlib import Path

import httpx

from bench.common import free_port, median, print_table, running_app, write_json
from guard_service.config import Settings
from guard_service.serving.prompts import chat_token_ids

PROBES = json.loads((Path(__file__).resolve().parents[1] / "tests" / "data" / "hp_probes.json").read_text())
TOKEN = "bench-admin"
FORBIDDEN = ("rowling", "hogwarts", "hermione")


async def perplexity(engine, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """exp(mean NLL) of the answer tokens given the prompt, under the unguarded model (prompt logprobs)."""
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0)
    ids = prompt_ids + answer_ids
    async for out in engine.generate(TokensPrompt(prompt_token_ids=ids), params, uuid.uuid4().hex):
        last = out
    lps = last.prompt_logprobs[len(prompt_ids):]
    nll = [-lp[tok].logprob for lp, tok in zip(lps, answer_ids, strict=True)]
    return math.exp(sum(nll) / max(1, len(nll)))


async def run() -> dict:
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(port=free_port(), enforce_eager=True, data_dir=Path(data), admin_tokens={"b": TOKEN})
        async with running_app(settings) as app:
            engine = app.state.engine.engine
            tok = engine.get_tokenizer()
            http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=600,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
            r = await http.post("/admin/v1/unlearning-requests", json={
                "target": "Harry Potter", "aliases": ["J.K. Rowling", "Hogwarts", "Hermione"],
                "facts": ["Harry Potter was written by J.K. Rowling."],
                "strength": {"expand_knowledge": False, "refuse_threshold": 1.0}})
            request_id = r.json()["id"]
            while (await http.get(f"/admin/v1/unlearning-requests/{request_id}")).json()["status"] != "active":
                await asyncio.sleep(0.2)
            rows = []
            for probe in PROBES["probes"]:
                body = {"model": settings.served_model_name, "temperature": 0, "max_tokens": 64,
                        "messages": [{"role": "user", "content": probe}]}
                guarded = (await http.post("/v1/chat/completions", json=body)).json()
                plain = (await http.post("/v1/chat/completions", json=body, headers={"x-guard-bypass": TOKEN})).json()
                prompt_ids = chat_token_ids(tok, body["messages"])
                texts = [guarded["choices"][0]["message"]["content"], plain["choices"][0]["message"]["content"]]
                ppl = [await perplexity(engine, prompt_ids, tok.encode(t, add_special_tokens=False)) for t in texts]
                leaked = [any(w in re.sub(r"[^a-z]", "", t.casefold()) for w in FORBIDDEN) for t in texts]
                rows.append({"probe": probe, "action": guarded["guard"]["action"], "guarded": texts[0],
                             "unguarded": texts[1], "ppl_guarded": ppl[0], "ppl_unguarded": ppl[1],
                             "leak_guarded": leaked[0], "leak_unguarded": leaked[1]})
                print(f"{guarded['guard']['action']:6s} ppl {ppl[0]:7.2f} vs {ppl[1]:7.2f}  {probe[:60]}", flush=True)
            await http.aclose()
    steered = [r for r in rows if r["action"] == "steer"]
    summary = [
        ["steered answers", len(steered), median([r["ppl_guarded"] for r in steered]) if steered else float("nan"),
         median([r["ppl_unguarded"] for r in steered]) if steered else float("nan")],
        ["all probes", len(rows), median([r["ppl_guarded"] for r in rows]), median([r["ppl_unguarded"] for r in rows])],
    ]
    print_table("perplexity under the unguarded model (median)", ["set", "n", "guarded", "unguarded"], summary)
    leaks = [sum(r["leak_guarded"] for r in rows), sum(r["leak_unguarded"] for r in rows)]
    print(f"\nprobes leaking a forbidden name: guarded {leaks[0]}/{len(rows)}, unguarded {leaks[1]}/{len(rows)}")
    return {"rows": rows, "median_ppl": {r[0]: {"guarded": r[2], "unguarded": r[3]} for r in summary},
            "leaks": {"guarded": leaks[0], "unguarded": leaks[1], "probes": len(rows)}}


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    write_json("steer_quality", asyncio.run(run()))


if __name__ == "__main__":
    main()
