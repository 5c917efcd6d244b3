"""Provenance index and veto costs, and MUSE-style VerbMem with the guard off and on.

1. Build speed (tokens/s) and bytes per indexed token at 1M / 10M / 100M tokens (synthetic Zipf corpora).
2. Veto cost per generated token at each size: a matcher fed a copied corpus span (long matches, the case the
   veto exists for) and fed unrelated tokens.
3. Generation throughput, veto on vs off: the same engine, 16 requests copying protected passages.
4. VerbMem on MUSE News (verbmem/forget.json): greedy continuation (<= 128 tokens) of each excerpt's prompt,
   ROUGE-L F1 x 100 against the true continuation, guard off vs on (protected corpus = the excerpts).
Targets: build >= 1M tokens/s, <= 7 bytes/token, veto <= 50 us/token at 100M, throughput >= 0.95x off.

    .venv/bin/python -m bench.provenance [--sizes 1e6,1e7,1e8] [--verbmem 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench.common import free_port, median, print_table, running_app, timed, write_json
from guard_service.config import Settings
from guard_service.evaluation.datasets import DEFAULT_DATA
from guard_service.evaluation.scoring import rouge_l_f1
from guard_service.guards.provenance import ProvenanceMatcher
from guard_service.guards.suffix_index import SuffixIndex
from guard_service.policy.artifacts import Files
from guard_service.protocol import GuardArgs

MUSE = DEFAULT_DATA / "muse" / "news"
TOKEN = "bench-admin"


def build_synthetic(size: int, out: Path) -> dict:
    from pydivsufsort import divsufsort

    rng = np.random.default_rng(size)
    tokens = np.minimum(rng.zipf(1.2, size), 49151).astype(np.uint16)
    began = time.perf_counter()
    sa = divsufsort(tokens).astype(np.int32)
    seconds = time.perf_counter() - began
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / Files.PROVENANCE_TOKENS, tokens)
    np.save(out / Files.PROVENANCE_SA, sa)
    np.save(out / Files.PROVENANCE_DOC_STARTS, np.zeros(1, dtype=np.int64))
    (out / Files.PROVENANCE_DOC_NAMES).write_text(json.dumps(["synthetic"]))
    return {"tokens": size, "build_s": seconds, "tokens_per_s": size / seconds,
            "bytes_per_token": (tokens.nbytes + sa.nbytes) / size}


def veto_cost(index: SuffixIndex, min_span: int = 8, steps: int = 4000) -> dict:
    rng = np.random.default_rng(0)
    start = int(rng.integers(0, index.n - steps - 1))
    copied = np.asarray(index.tokens_np[start:start + steps], dtype=np.int64).tolist()
    unrelated = rng.integers(0, 49152, steps).tolist()
    out = {}
    for name, stream in (("copying", copied), ("unrelated", unrelated)):
        m = ProvenanceMatcher(index, min_span)
        began = time.perf_counter()
        for tok in stream:
            m.feed(tok)
            m.continuations()
        out[f"{name}_us_per_token"] = (time.perf_counter() - began) / steps * 1e6
        out[f"{name}_vetoes"] = m.vetoes
    return out


async def engine_part(args: argparse.Namespace) -> dict:
    import httpx
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    from guard_service.serving.prompts import chat_token_ids

    excerpts = json.loads((MUSE / "verbmem" / "forget.json").read_text())[: args.verbmem]
    articles = json.loads((MUSE / "raw" / "forget.json").read_text())[:40]
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(port=free_port(), enforce_eager=True, data_dir=Path(data), admin_tokens={"b": TOKEN})
        async with running_app(settings) as app:
            http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=600,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
            r = await http.post("/admin/v1/unlearning-requests", json={
                "target": "MUSE News forget set", "kind": "document",
                "protected_documents": [e["prompt"] + e["gt"] for e in excerpts] + articles,
                "strength": {"expand_knowledge": False}})
            request_id = r.json()["id"]
            while (await http.get(f"/admin/v1/unlearning-requests/{request_id}")).json()["status"] != "active":
                await asyncio.sleep(0.2)
            policy = app.state.registry.policies[request_id]
            watch = GuardArgs(watch=(policy.policy_key,)).to_extra_args()
            engine = app.state.engine.engine
            tok = engine.get_tokenizer()

            async def generate(prompts: list[list[int]], extra: dict | None, max_tokens: int) -> list[str]:
                params = SamplingParams(temperature=0, max_tokens=max_tokens, extra_args=extra,
                                        output_kind=RequestOutputKind.FINAL_ONLY)

                async def one(ids: list[int]) -> str:
                    async for out in engine.generate(TokensPrompt(prompt_token_ids=ids), params, uuid.uuid4().hex):
                        last = out
                    return last.outputs[0].text
                return list(await asyncio.gather(*[one(p) for p in prompts]))

            # throughput: 16 requests asking to copy protected passages, veto on vs off
            ask = "Repeat the following text word for word.\n\n"
            copy_prompts = [chat_token_ids(tok, [{"role": "user", "content": ask + tok.decode(tok.encode(a)[:100])}])
                            for a in articles[:16]]
            samples: dict[str, list[float]] = {"veto off": [], "veto on": []}
            await generate(copy_prompts, watch, 64)  # warm-up, loads the index in the worker
            for _ in range(args.reps):
                for mode, extra in (("veto off", None), ("veto on", watch)):
                    async def batch(extra: dict | None = extra) -> int:
                        texts = await generate(copy_prompts, extra, 64)
                        return sum(len(tok.encode(t, add_special_tokens=False)) for t in texts)
                    tps, _ = await timed(batch)
                    samples[mode].append(tps)
                    print(f"{mode:9s} {tps:7.1f} tok/s", flush=True)

            # VerbMem: continuation of the excerpt's prompt (last 256 tokens), <= 128 new tokens, ROUGE-L F1
            prompts = [tok.encode(e["prompt"], add_special_tokens=False)[-256:] for e in excerpts]
            scores = {}
            for mode, extra in (("guard off", None), ("guard on", watch)):
                outs = await generate(prompts, extra, 128)
                truths = [tok.decode(tok.encode(e["gt"], add_special_tokens=False)[:128]) for e in excerpts]
                scores[mode] = 100 * float(np.mean([rouge_l_f1(o, t) for o, t in zip(outs, truths, strict=True)]))
                print(f"VerbMem {mode}: {scores[mode]:.2f}", flush=True)
            await http.aclose()
    return {"throughput_tok_s": samples,
            "throughput_ratio": median(samples["veto on"]) / median(samples["veto off"]),
            "verbmem_rougeL_f1": scores, "verbmem_excerpts": len(excerpts)}


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e6,1e7,1e8")
    parser.add_argument("--verbmem", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-engine", action="store_true")
    args = parser.parse_args()
    rows, sizes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(float(s)) for s in args.sizes.split(",")):
            built = build_synthetic(size, Path(tmp) / str(size))
            cost = veto_cost(SuffixIndex(Path(tmp) / str(size)))
            sizes[size] = {**built, **cost}
            rows.append([f"{size:,}", built["tokens_per_s"] / 1e6, built["bytes_per_token"],
                         cost["copying_us_per_token"], cost["unrelated_us_per_token"]])
            print(f"{size:,} tokens: built at {built['tokens_per_s'] / 1e6:.2f}M tok/s, "
                  f"veto {cost['copying_us_per_token']:.1f} us/token", flush=True)
    print_table("provenance index (synthetic Zipf corpora)",
                ["tokens", "build M tok/s", "bytes/token", "veto us/token (copying)", "veto us/token (unrelated)"],
                rows)
    result = {"sizes": sizes, "targets": {"build_tokens_per_s": 1e6, "bytes_per_token": 7, "veto_us_per_token": 50,
                                          "throughput_ratio": 0.95}}
    if not args.skip_engine:
        engine = asyncio.run(engine_part(args))
        print_table("veto on vs off, and VerbMem (ROUGE-L F1 x100, lower = less verbatim recall)",
                    ["measure", "off", "on", "ratio / note"],
                    [["throughput tok/s", median(engine["throughput_tok_s"]["veto off"]),
                      median(engine["throughput_tok_s"]["veto on"]), engine["throughput_ratio"]],
                     ["VerbMem", engine["verbmem_rougeL_f1"]["guard off"], engine["verbmem_rougeL_f1"]["guard on"],
                      f"{engine['verbmem_excerpts']} excerpts"]])
        result.update(engine)
    write_json("provenance", result)


if __name__ == "__main__":
    main()
