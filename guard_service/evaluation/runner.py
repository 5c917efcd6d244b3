"""`guard-service eval`: run the chosen suites against a live server and write the report."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform

from guard_service.evaluation import report
from guard_service.evaluation.client import EvalClient
from guard_service.evaluation.suites import SUITES, EvalOptions

OFFLINE = {"fixture"}  # suites that score local model folders instead of asking the server


def _command(args: argparse.Namespace, suite: str) -> str:
    """How to reproduce one suite's numbers (never the token)."""
    parts = ["guard-service eval", f"--suite {suite}"]
    if suite not in OFFLINE:
        parts.append(f"--base-url {args.base_url} --admin-token $TOKEN")
    parts += [f"--{k.replace('_', '-')} {v}" for k, v in (("action", args.action), ("limit", args.limit))
              if v is not None]
    if args.max_tokens != 80:
        parts.append(f"--max-tokens {args.max_tokens}")
    if getattr(args, "stream", False) and suite not in OFFLINE:
        parts.append("--stream")
    return " ".join(parts)


async def run_suites(args: argparse.Namespace) -> None:
    options = EvalOptions(data=args.data, action=args.action, limit=args.limit, max_tokens=args.max_tokens)
    machine = f"{platform.machine()}, {platform.processor() or platform.system()}"
    online = [s for s in args.suite if s not in OFFLINE]
    async with contextlib.AsyncExitStack() as stack:
        client, server = None, {}
        if online:
            client = await stack.enter_async_context(
                EvalClient(args.base_url, args.admin_token or "", concurrency=args.concurrency,
                           api_key=args.api_key, stream=getattr(args, "stream", False)))
            server = await client.server_info()
        for name in dict.fromkeys(args.suite):
            result = await SUITES[name](options).run(client)
            result.command = _command(args, name)
            result.server = {**server, "machine": machine} if name not in OFFLINE else {"machine": machine}
            result.measured_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
            for path in report.write(result, args.out):
                print(f"wrote {path}")
            for check in result.checks:
                status = {True: "met", False: "MISSED", None: "n/a"}[check.met]
                print(f"  {name}: {check.name}: {check.value} ({check.op} {check.target:g}) {status}")
