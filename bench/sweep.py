"""The load curve: throughput and latency against concurrency, for the raw engine and for the service in four
states, in one run on one machine; ratios to the raw engine of the same run.

Arms, each at every concurrency (a batch of that many concurrent streaming requests, `--tokens` output tokens
each, ignore_eos, repeated `--reps` times):
    raw engine            vLLM `AsyncLLM` built without the guard (no logits processor), driven directly
    guard off             the service with the admin bypass header (HTTP, tokenization, SSE: no guard)
    1 policy              one active policy (a steer policy every prompt here matches: every row is steered)
    100 policies          99 more, unrelated (the classifier scores all 100; the worker carries the one)
    100 + output enforced the matching policy's on_leak switched to act: leak-heading traffic (every answer is
                          about the target), its names in every spelling scanned as they arrive, text released
                          as `GUARD_OUTPUT_MODE` says (hold: as soon as nothing in it can still become a leak)
    guard off, benign     the bypass again, on benign prompts (a lighthouse story, how bread rises)
    100 act, benign       the same benign prompts with all 100 policies acting on leaks (the default): what a
                          client of a server with policies at their defaults waits for its first delivered text
(In "1 policy" and "100 policies", on_leak is `report`: the output is scanned and leaks recorded, never
held back.) Time to first text and inter-chunk gaps are when chunks with text reach the client: delivered text.
Clients run in a separate process through the official openai SDK (the raw engine in-process, as a
client library would). Classifier time is the server's own `guard_classifier_duration_seconds` over the arm.

    python -m bench.sweep [--concurrency 1 4 16 64] [--tokens 64] [--reps 2] [--policies 100] [--output-mode hold]

On a CUDA host the same command runs the same arms; its figures are reported separately, named by the device.
`--output-mode release` writes `sweep_<device>_release.json`, beside the default mode's.
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
import openai

from bench.common import benign_prompts, free_port, median, percentile, print_table, running_app, write_json
from bench.throughput import timed_stream
from guard_service.cli import ONEDNN_CACHE
from guard_service.config import Settings
from guard_service.device import has_cuda

TOKEN = "bench-admin"
PROMPTS = [f"Write a story set in the world of Harry Potter, chapter {i}." for i in range(512)]
BENIGN = benign_prompts(512)


def _summary(results: list[tuple[float, list[float], int]], wall: float) -> dict:
    """Per-request (time to first token, inter-token gaps, tokens) of one batch: the arm's figures."""
    ttft = [r[0] for r in results]
    itl = [g for r in results for g in r[1]]
    tokens = sum(r[2] for r in results)
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall, "req_s": len(results) / wall,
            "ttft_s": ttft, "itl_s": itl}


def http_streams(url: str, model: str, prompts: list[str], tokens: int, headers: dict[str, str] | None) -> dict:
    """One batch of concurrent streams through the openai SDK (in a client process of its own)."""

    async def batch() -> dict:
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=900, default_headers=headers)

        async def one(p: str) -> tuple[float, list[float], int]:
            began, arrivals, n = await timed_stream(client, model, p, tokens)
            return arrivals[0] - began, [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)], n

        began = time.perf_counter()
        results = await asyncio.gather(*[one(p) for p in prompts])
        wall = time.perf_counter() - began
        await client.close()
        return _summary(list(results), wall)

    return asyncio.run(batch())


async def raw_engine(settings: Settings, concurrency: list[int], tokens: int, reps: int) -> dict[int, list[dict]]:
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    from guard_service.engine import engine_args
    from guard_service.serving.prompts import chat_token_ids

    engine = await asyncio.to_thread(AsyncLLM.from_engine_args, engine_args(settings, guarded=False))
    try:
        tok = engine.get_tokenizer()
        ids = [chat_token_ids(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
        params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True,
                                output_kind=RequestOutputKind.DELTA)

        async def one(p: list[int]) -> tuple[float, list[float], int]:
            began = time.perf_counter()
            arrivals: list[float] = []
            n = 0
            async for out in engine.generate(TokensPrompt(prompt_token_ids=p), params, uuid.uuid4().hex):
                got = len(out.outputs[0].token_ids)
                if got:
                    arrivals += [time.perf_counter()] * got
                    n += got
            return arrivals[0] - began, [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)], n

        async def batch(c: int) -> dict:
            began = time.perf_counter()
            results = await asyncio.gather(*[one(p) for p in ids[:c]])
            return _summary(list(results), time.perf_counter() - began)

        await batch(max(concurrency))  # warm-up
        out: dict[int, list[dict]] = {}
        for rep in range(reps):
            for c in concurrency:
                out.setdefault(c, []).append(await batch(c))
                print(f"rep {rep + 1}/{reps} raw engine  c={c:<4d} {out[c][-1]['tok_s']:7.1f} tok/s", flush=True)
        return out
    finally:
        engine.shutdown()


def _classifier_totals(metrics_text: str) -> tuple[float, float]:
    from prometheus_client.parser import text_string_to_metric_families

    total = count = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "guard_classifier_duration_seconds":
            for s in family.samples:
                if s.name.endswith("_sum"):
                    total += s.value
                elif s.name.endswith("_count"):
                    count += s.value
    return total, count


async def service(settings: Settings, concurrency: list[int], tokens: int, reps: int,
                  policies: int) -> tuple[dict[str, dict[int, list[dict]]], dict[str, float]]:
    base = f"http://127.0.0.1:{settings.port}"
    results: dict[str, dict[int, list[dict]]] = {}
    classifier_ms: dict[str, float] = {}
    async with running_app(settings) as app:
        http = httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600)
        clients = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()
        model = settings.served_model_name

        async def wait_active(request_id: str, version: int = 1) -> None:
            while True:
                body = (await http.get(f"/admin/v1/unlearning-requests/{request_id}")).json()
                if (body["enforcement"]["state"], body["enforcement"]["version"]) == ("enforced", version):
                    return
                await asyncio.sleep(0.1)

        async def arm(name: str, headers: dict[str, str] | None, prompts: list[str] = PROMPTS) -> None:
            before = _classifier_totals((await http.get("/metrics")).text)
            for rep in range(reps):
                for c in concurrency:
                    got = await loop.run_in_executor(clients, http_streams, base + "/v1", model, prompts[:c], tokens,
                                                     headers)
                    results.setdefault(name, {}).setdefault(c, []).append(got)
                    print(f"rep {rep + 1}/{reps} {name:22s} c={c:<4d} {got['tok_s']:7.1f} tok/s", flush=True)
            after = _classifier_totals((await http.get("/metrics")).text)
            calls = after[1] - before[1]
            classifier_ms[name] = 1000 * (after[0] - before[0]) / calls if calls else 0.0

        bypass = {"x-guard-bypass": TOKEN}
        await loop.run_in_executor(clients, http_streams, base + "/v1", model, PROMPTS[:max(concurrency)], tokens,
                                   bypass)  # warm-up
        await arm("guard off", bypass)
        r = await http.post("/admin/v1/unlearning-requests", json={
            "target": "Harry Potter", "aliases": ["J.K. Rowling", "Hogwarts"], "action": "steer", "on_leak": "report",
            "strength": {"expand_knowledge": False, "refuse_threshold": 1.0}})
        r.raise_for_status()
        hp = r.json()["id"]
        await wait_active(hp)
        check = await http.post("/v1/chat/completions", json={
            "model": model, "max_tokens": 1, "messages": [{"role": "user", "content": PROMPTS[0]}]})
        assert check.headers["x-guard-action"] == "steer", check.headers
        await arm("1 policy", None)
        print(f"creating {policies - 1} more policies ...", flush=True)
        for i in range(policies - 1):
            r = await http.post("/admin/v1/unlearning-requests", json={
                "target": f"Fictional Person {i:03d}", "aliases": [f"Persona{i:03d}"], "on_leak": "report",
                "facts": [f"Fictional Person {i:03d} was born in Town {i}."], "strength": {"expand_knowledge": False}})
            r.raise_for_status()
            last = r.json()["id"]
        await wait_active(last)
        while len(app.state.registry.active()) < policies:
            await asyncio.sleep(0.2)
        await arm(f"{policies} policies", None)
        r = await http.patch(f"/admin/v1/unlearning-requests/{hp}", json={"on_leak": "act"})
        r.raise_for_status()
        await wait_active(hp, r.json()["version"])
        await arm(f"{policies} + output enforced", None)
        others = [p["id"] for p in (await http.get("/admin/v1/unlearning-requests")).json() if p["id"] != hp]
        versions = {}
        for request_id in others:
            r = await http.patch(f"/admin/v1/unlearning-requests/{request_id}", json={"on_leak": "act"})
            r.raise_for_status()
            versions[request_id] = r.json()["version"]
        for request_id, version in versions.items():
            await wait_active(request_id, version)
        await arm("guard off, benign", bypass, BENIGN)
        await arm(f"{policies} act, benign", None, BENIGN)
        clients.shutdown()
        await http.aclose()
    return results, classifier_ms


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        xs = [r["concurrency"] for r in mine]
        left.plot(xs, [r["tok_s"] for r in mine], marker="o", label=arm)
        right.plot(xs, [r["itl_p99_ms"] for r in mine], marker="o", label=arm)
    for ax, label in ((left, "output tokens/s"), (right, "inter-token latency p99 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault(*ONEDNN_CACHE)  # as `guard-service serve` runs, for both arms
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--policies", type=int, default=100)
    parser.add_argument("--eager", action="store_true")
    parser.add_argument("--output-mode", choices=["hold", "release"], default="hold")
    args = parser.parse_args()

    device = "cuda" if has_cuda() else "cpu"
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(port=free_port(), enforce_eager=args.eager, data_dir=Path(data),
                            admin_tokens={"bench": TOKEN}, max_num_seqs=max(64, max(args.concurrency)),
                            max_model_len=512, output_mode=args.output_mode)
        raw = asyncio.run(raw_engine(settings, args.concurrency, args.tokens, args.reps))
        served, classifier_ms = asyncio.run(service(settings, args.concurrency, args.tokens, args.reps,
                                                    args.policies))
    arms = {"raw engine": raw, **served}
    rows = []
    for arm, by_c in arms.items():
        for c, batches in by_c.items():
            ttft = [t for b in batches for t in b["ttft_s"]]
            itl = [t for b in batches for t in b["itl_s"]]
            tok_s = median([b["tok_s"] for b in batches])
            rows.append({"arm": arm, "concurrency": c, "tok_s": tok_s, "req_s": median([b["req_s"] for b in batches]),
                         "ratio_vs_raw": tok_s / median([b["tok_s"] for b in raw[c]]),
                         "ttft_p50_ms": 1000 * percentile(ttft, 0.5), "ttft_p99_ms": 1000 * percentile(ttft, 0.99),
                         "itl_p50_ms": 1000 * percentile(itl, 0.5), "itl_p99_ms": 1000 * percentile(itl, 0.99),
                         "classifier_ms_mean": classifier_ms.get(arm)})
    for r in rows:  # against the bypass of the same prompts, same concurrency, same run
        by = next((b for b in rows if b["concurrency"] == r["concurrency"] and b["arm"] == (
            "guard off, benign" if "benign" in r["arm"] else "guard off")), None)
        r["ttft_p50_vs_bypass"] = None if by is None else r["ttft_p50_ms"] / by["ttft_p50_ms"]
        r["itl_p99_vs_bypass"] = None if by is None else r["itl_p99_ms"] / by["itl_p99_ms"]
    rows.sort(key=lambda r: (r["concurrency"], list(arms).index(r["arm"])))
    header = ["arm", "conc", "tok/s", "req/s", "x raw", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "clf ms",
              "TTFT x off", "ITL99 x off"]
    print_table(f"concurrency sweep on {device} ({args.tokens} output tokens per request, median of {args.reps}; "
                "latencies in ms)", header,
                [[r["arm"], r["concurrency"], r["tok_s"], r["req_s"], r["ratio_vs_raw"], r["ttft_p50_ms"],
                  r["ttft_p99_ms"], r["itl_p50_ms"], r["itl_p99_ms"],
                  "-" if r["classifier_ms_mean"] is None else r["classifier_ms_mean"],
                  *("-" if r[k] is None else r[k] for k in ("ttft_p50_vs_bypass", "itl_p99_vs_bypass"))] for r in rows])
    name = f"sweep_{device}" if args.output_mode == "hold" else f"sweep_{device}_{args.output_mode}"
    path = write_json(name, {"device": device, "args": vars(args), "rows": rows})
    _plot(rows, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
