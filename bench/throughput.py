"""HTTP layer cost: 16 concurrent chat requests x 64 tokens through the OpenAI API vs direct `AsyncLLM`,
on the same engine in the same run. Target: HTTP keeps >= 0.95 of direct throughput.

    .venv/bin/python -m bench.throughput [--reps 3] [--eager]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor

import openai

from bench.common import batch_arguments, free_port, median, print_table, running_app, timed, write_json
from guard_service.config import Settings
from guard_service.serving.prompts import chat_token_ids

PROMPTS = [f"Write a short story about a robot named Unit {i}." for i in range(64)]


def http_batch(url: str, model: str, prompts: list[str], tokens: int, stream: bool,
               headers: dict[str, str] | None = None) -> tuple[int, float]:
    """One concurrent batch through the openai SDK, run in a separate client process like a real client."""

    async def batch() -> tuple[int, float]:
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=600, default_headers=headers)

        async def one(p: str) -> int:
            kwargs = dict(model=model, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=tokens,
                          extra_body={"ignore_eos": True})
            if not stream:
                return (await client.chat.completions.create(**kwargs)).usage.completion_tokens
            usage = None
            async for chunk in await client.chat.completions.create(
                    **kwargs, stream=True, stream_options={"include_usage": True}):
                usage = chunk.usage or usage
            return usage.completion_tokens

        began = time.perf_counter()
        total = sum(await asyncio.gather(*[one(p) for p in prompts]))
        elapsed = time.perf_counter() - began
        await client.close()
        return total, elapsed

    return asyncio.run(batch())


async def timed_stream(client: openai.AsyncOpenAI, model: str, prompt: str,
                       tokens: int) -> tuple[float, list[float], int]:
    """One stream through the openai SDK: when it began, when each chunk with text arrived (perf_counter), and
    the output tokens it reports."""
    began = time.perf_counter()
    arrivals: list[float] = []
    usage = None
    async for chunk in await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=tokens,
            extra_body={"ignore_eos": True}, stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter())
    return began, arrivals, usage.completion_tokens


def http_stream_timings(url: str, model: str, prompts: list[str], tokens: int,
                        headers: dict[str, str] | None = None) -> dict[str, list[float]]:
    """Concurrent streams through the openai SDK, per request: time to first text (s), time per output token
    after it (s), and the longest wait between two chunks (s: what a holdback adds)."""

    async def batch() -> dict[str, list[float]]:
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=600, default_headers=headers)

        async def one(p: str) -> tuple[float, float, float]:
            began, arrivals, n = await timed_stream(client, model, p, tokens)
            gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
            return arrivals[0] - began, (arrivals[-1] - arrivals[0]) / max(1, n - 1), max(gaps, default=0.0)

        results = await asyncio.gather(*[one(p) for p in prompts])
        await client.close()
        return {"ttft_s": [r[0] for r in results], "tpot_s": [r[1] for r in results],
                "max_gap_s": [r[2] for r in results]}

    return asyncio.run(batch())


async def run(args: argparse.Namespace) -> dict:
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    settings = Settings(port=free_port(), enforce_eager=args.eager, max_num_seqs=max(64, args.concurrency))
    async with running_app(settings) as app:
        engine = app.state.engine.engine
        tok = engine.get_tokenizer()
        prompts = PROMPTS[: args.concurrency]
        ids = [chat_token_ids(tok, [{"role": "user", "content": p}]) for p in prompts]
        params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        url = f"http://127.0.0.1:{settings.port}/v1"
        clients = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()

        async def direct() -> int:
            async def one(p: list[int]) -> int:
                async for out in engine.generate(TokensPrompt(prompt_token_ids=list(p)), params, uuid.uuid4().hex):
                    last = out
                return len(last.outputs[0].token_ids)
            return sum(await asyncio.gather(*[one(p) for p in ids]))

        async def http(stream: bool) -> tuple[float, int]:
            tokens, seconds = await loop.run_in_executor(
                clients, http_batch, url, settings.served_model_name, prompts, args.tokens, stream)
            return tokens / seconds, tokens

        async def direct_timed() -> tuple[float, int]:
            return await timed(direct)

        modes = {"direct AsyncLLM": direct_timed, "HTTP (openai SDK)": lambda: http(False),
                 "HTTP stream (openai SDK)": lambda: http(True)}
        await direct()  # warm-up: first batch pays for lazy init
        await http(True)
        samples: dict[str, list[float]] = {m: [] for m in modes}
        for rep in range(args.reps):
            for mode, fn in modes.items():  # interleaved, so drift hits every mode alike
                tps, tokens = await fn()
                assert tokens == args.concurrency * args.tokens, (mode, tokens)
                samples[mode].append(tps)
                print(f"rep {rep + 1}/{args.reps} {mode:26s} {tps:7.1f} tok/s", flush=True)
        clients.shutdown()

    base = median(samples["direct AsyncLLM"])
    rows = [[m, median(v), median(v) / base] for m, v in samples.items()]
    print_table(f"{args.concurrency} concurrent chat requests x {args.tokens} tokens "
                f"({'eager' if args.eager else 'compiled'}, median of {args.reps})",
                ["mode", "output tok/s", "ratio vs direct"], rows)
    return {"concurrency": args.concurrency, "tokens": args.tokens, "reps": args.reps, "eager": args.eager,
            "samples_tok_s": samples,
            "median_tok_s": {m: median(v) for m, v in samples.items()},
            "ratio_vs_direct": {m: median(v) / base for m, v in samples.items()},
            "target_ratio": 0.95}


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = batch_arguments(argparse.ArgumentParser(description=__doc__,
                                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args()
    write_json("throughput", asyncio.run(run(args)))


if __name__ == "__main__":
    main()
