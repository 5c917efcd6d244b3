"""What the guard costs: the same engine and the same 16-request batch (HP questions, 64 tokens each) with the
guard off (admin bypass), with 1 active policy (every row steered by it), and with 100 active policies; plus an
engine-level run where every row carries all 100 policies into the logits processor; the prompt classifier's
latency per prompt at p50/p99 for 1 and 100 active policies; and streaming latency (time to first text, time per
token, the longest wait between chunks: delivered text) with the guard off and with 100 policies whose output guard
judges the text before it is released (`on_leak: act`, the default, as in every guarded arm here), on the HP
prompts (answers about a policy's target: leak-heading) and on benign ones (a lighthouse story, how bread rises).
Targets: >= 0.95x unguarded throughput with 1 policy, >= 0.90x with 100; classifier p50 <= 10 ms.

    .venv/bin/python -m bench.guard_overhead [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

from bench.common import (
    batch_arguments,
    benign_prompts,
    free_port,
    median,
    percentile,
    print_table,
    running_app,
    timed,
    write_json,
)
from bench.throughput import http_batch, http_stream_timings
from guard_service.config import Settings
from guard_service.frontend.classifier import EMBEDDINGS, classify
from guard_service.policy.classifier_data import negative_bank
from guard_service.protocol import GuardArgs
from guard_service.serving.prompts import chat_token_ids

TOKEN = "bench-admin"
HP_PROMPTS = [f"Write a story set in the world of Harry Potter, chapter {i}." for i in range(64)]
BENIGN = benign_prompts(64)


async def create(http: httpx.AsyncClient, body: dict) -> str:
    r = await http.post("/admin/v1/unlearning-requests", json=body)
    r.raise_for_status()
    request_id = r.json()["id"]
    while (await http.get(f"/admin/v1/unlearning-requests/{request_id}")).json()["status"] != "active":
        await asyncio.sleep(0.1)
    return request_id


def classifier_ms(policies: list, prompts: list[str]) -> list[float]:
    """Per-prompt latency of a first sight (the embedding cache is cleared: repeats would be cheaper)."""
    out = []
    for p in prompts:
        EMBEDDINGS.clear()
        began = time.perf_counter()
        classify([p], policies)
        out.append((time.perf_counter() - began) * 1000)
    return out


async def run(args: argparse.Namespace) -> dict:
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    with tempfile.TemporaryDirectory() as data:
        settings = Settings(port=free_port(), enforce_eager=args.eager, data_dir=Path(data),
                            admin_tokens={"bench": TOKEN})
        async with running_app(settings) as app:
            base = f"http://127.0.0.1:{settings.port}"
            http = httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600)
            clients = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            loop = asyncio.get_running_loop()
            prompts = HP_PROMPTS[: args.concurrency]
            model = settings.served_model_name

            async def through_http(headers: dict[str, str] | None) -> tuple[float, int]:
                tokens, seconds = await loop.run_in_executor(
                    clients, http_batch, base + "/v1", model, prompts, args.tokens, False, headers)
                return tokens / seconds, tokens

            engine = app.state.engine.engine
            ids = [chat_token_ids(engine.get_tokenizer(), [{"role": "user", "content": p}]) for p in prompts]

            async def direct(extra: dict | None) -> tuple[float, int]:
                params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True, extra_args=extra,
                                        output_kind=RequestOutputKind.FINAL_ONLY)

                async def one(p: list[int]) -> int:
                    async for out in engine.generate(TokensPrompt(prompt_token_ids=p), params, uuid.uuid4().hex):
                        last = out
                    return len(last.outputs[0].token_ids)

                async def batch() -> int:
                    return sum(await asyncio.gather(*[one(p) for p in ids]))
                return await timed(batch)

            hp_id = await create(http, {"target": "Harry Potter", "aliases": ["J.K. Rowling", "Hogwarts"],
                                        "action": "steer", "strength": {"expand_knowledge": False,
                                                                        "refuse_threshold": 1.0}})
            hp = app.state.registry.policies[hp_id]
            check = await http.post("/v1/chat/completions", json={
                "model": model, "max_tokens": 1, "messages": [{"role": "user", "content": prompts[0]}]})
            assert check.headers["x-guard-action"] == "steer", check.headers
            bypass = {"x-guard-bypass": TOKEN}
            await through_http(bypass)  # warm-up
            modes = {"guard off (bypass)": lambda: through_http(bypass),
                     "1 policy, rows steered": lambda: through_http(None)}
            samples: dict[str, list[float]] = {m: [] for m in modes}
            clf: dict[str, list[float]] = {}
            probe_prompts = list(negative_bank())[:100] + HP_PROMPTS[:100]
            clf["1 policy"] = classifier_ms([hp], probe_prompts)

            async def measure(selected: dict) -> None:
                for rep in range(args.reps):
                    for mode, fn in selected.items():
                        tps, tokens = await fn()
                        if tokens != args.concurrency * args.tokens:  # the output guard ended some choices early
                            print(f"  {mode}: {tokens} of {args.concurrency * args.tokens} tokens delivered")
                        samples.setdefault(mode, []).append(tps)
                        print(f"rep {rep + 1}/{args.reps} {mode:34s} {tps:7.1f} tok/s", flush=True)

            await measure(modes)
            print(f"creating {args.policies - 1} more policies ...", flush=True)
            for i in range(args.policies - 1):
                await create(http, {"target": f"Fictional Person {i:03d}", "aliases": [f"Persona{i:03d}"],
                                    "facts": [f"Fictional Person {i:03d} was born in Town {i}."],
                                    "strength": {"expand_knowledge": False}})
            app.state.registry.refresh()
            policies = app.state.registry.active()
            assert len(policies) == args.policies
            clf[f"{args.policies} policies"] = classifier_ms(policies, probe_prompts)
            all_keys = GuardArgs(steer=tuple(p.policy_key for p in policies)).to_extra_args()
            many = {f"{args.policies} policies active, rows steered": lambda: through_http(None),
                    "guard off (bypass) again": lambda: through_http(bypass),
                    "engine: rows without policies": lambda: direct(None),
                    f"engine: rows carry {args.policies} policies": lambda: direct(all_keys)}
            await direct(all_keys)  # load all into the worker once
            await measure(many)
            streams: dict[str, dict[str, list[float]]] = {}
            benign = BENIGN[: args.concurrency]
            for mode, headers, asked in (("guard off (bypass), HP", bypass, prompts),
                                         (f"{args.policies} policies, output judged, HP", None, prompts),
                                         ("guard off (bypass), benign", bypass, benign),
                                         (f"{args.policies} policies, output judged, benign", None, benign)):
                await loop.run_in_executor(clients, http_stream_timings, base + "/v1", model, asked, args.tokens,
                                           headers)  # warm-up
                streams[mode] = await loop.run_in_executor(clients, http_stream_timings, base + "/v1", model,
                                                           asked, args.tokens, headers)
            clients.shutdown()
            await http.aclose()

    off = median(samples["guard off (bypass)"] + samples["guard off (bypass) again"])
    engine_off = median(samples["engine: rows without policies"])
    rows = []
    for mode, values in samples.items():
        ref = engine_off if mode.startswith("engine") else off
        rows.append([mode, median(values), median(values) / ref])
    print_table(f"{args.concurrency} requests x {args.tokens} tokens, median of {args.reps} "
                f"({'eager' if args.eager else 'compiled'})", ["mode", "output tok/s", "ratio vs off"], rows)
    stream_rows = [[mode, 1000 * percentile(t["ttft_s"], 0.5), 1000 * percentile(t["ttft_s"], 0.99),
                    1000 * median(t["tpot_s"]), 1000 * percentile(t["max_gap_s"], 0.5)] for mode, t in streams.items()]
    print_table(f"streaming latency, {args.concurrency} concurrent streams x {args.tokens} tokens (ms)",
                ["mode", "TTFT p50", "TTFT p99", "per token p50", "longest chunk gap p50"], stream_rows)
    clf_rows = [[name, percentile(v, 0.5), percentile(v, 0.99), len(v)] for name, v in clf.items()]
    print_table("prompt classifier latency per prompt (ms)", ["active policies", "p50", "p99", "prompts"], clf_rows)
    return {"concurrency": args.concurrency, "tokens": args.tokens, "reps": args.reps, "eager": args.eager,
            "samples_tok_s": samples, "ratio": {r[0]: r[2] for r in rows},
            "classifier_ms": {r[0]: {"p50": r[1], "p99": r[2]} for r in clf_rows},
            "streaming_ms": {r[0]: {"ttft_p50": r[1], "ttft_p99": r[2], "per_token_p50": r[3], "longest_gap_p50": r[4]}
                             for r in stream_rows},
            "targets": {"1 policy": 0.95, "100 policies": 0.90, "classifier_p50_ms": 10}}


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = batch_arguments(argparse.ArgumentParser(description=__doc__,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--policies", type=int, default=100)
    args = parser.parse_args()
    write_json("guard_overhead", asyncio.run(run(args)))


if __name__ == "__main__":
    main()
