"""Shared benchmark plumbing: an in-process server over one engine, timing, table and JSON output.

Benchmarks compare ratios inside one run on one engine: this machine is too noisy for absolute targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import socket
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from guard_service.config import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def batch_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The knobs every throughput benchmark shares: one batch of concurrent requests, repeated."""
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--eager", action="store_true", help="enforce_eager (faster start, ~7%% slower decode)")
    return parser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[Any]:
    """Serve `create_app(settings)` with uvicorn inside this event loop; yield the app once healthy."""
    from guard_service.api.app import create_app

    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    base = f"http://127.0.0.1:{settings.port}"
    try:
        async with httpx.AsyncClient() as http:
            while True:
                if task.done():
                    task.result()
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(base + "/health")).status_code == 200:
                        break
                await asyncio.sleep(0.5)
        yield app
    finally:
        server.should_exit = True
        await task


async def timed(fn: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    """Run `fn` (which returns a token count); return (tokens per second, tokens)."""
    began = time.perf_counter()
    tokens = await fn()
    return tokens / (time.perf_counter() - began), tokens


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def percentile(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"machine": {"platform": platform.platform(), "processor": platform.machine()},
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path


def token_deltas(tokenizer, text: str) -> list[str]:
    """The text as the engine streams it: one delta per token, a character split across tokens held back until
    it is whole (as vLLM's detokenizer does)."""
    ids, out, done = tokenizer.encode(text), [], ""
    for i in range(len(ids)):
        now = tokenizer.decode(ids[:i + 1])
        if not now.endswith("\ufffd"):
            out.append(now[len(done):])
            done = now
    return out


def benign_prompts(n: int) -> list[str]:
    """Prompts no policy is about (a lighthouse story, how bread rises): what a benign stream is asked."""
    return [f"Write a short story about a lighthouse keeper, part {i}." if i % 2 else
            f"Explain how bread rises, in step {i}." for i in range(n)]


def compile_policies(specs: dict[str, Any], model_dir: Path, tokenizer: Any, root: Path) -> list[Any]:
    """Each request (by policy id) compiled as the server compiles it, version 1 under `root`, and loaded as the
    API process loads it (`registry.load_policy`): real policies, in process, without a server."""
    from guard_service.compiler.compile import compile_version
    from guard_service.frontend.registry import load_policy

    ctx = compile_context(model_dir, tokenizer, root)
    out = []
    for key, spec in specs.items():
        asyncio.run(compile_version(ctx, key, 1, spec, [], False))
        out.append(load_policy(key, 1, ctx.policies_dir / key / "v1", spec.model_dump(mode="json")))
    return out


def compile_context(model_dir: Path, tokenizer: Any, root: Path) -> Any:
    """A compiler context writing versions under `root` (no server, no knowledge expansion)."""
    from guard_service.compiler.compile import CompileContext

    return CompileContext(policies_dir=root, indexes_dir=Path("indexes"), model_dir=model_dir,
                          served_model_name="bench", tokenizer=tokenizer)
