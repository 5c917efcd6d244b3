"""`guard-service` command line: serve, prepare-model, forget / policies / audit (admin twins), store migrate,
eval."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from guard_service.config import Settings


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the OpenAI-compatible server (flags override GUARD_* env vars)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--model", help="local HF model folder (default: the prepared embedded SmolLM2)")
    p.add_argument("--fixture", help="serve an evaluation fixture prepared by `prepare-model --fixture`")
    p.add_argument("--served-model-name")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--gpu-memory-utilization", type=float)
    p.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--tensor-parallel-size", type=int)
    p.add_argument("--pipeline-parallel-size", type=int)
    p.add_argument("--distributed-executor-backend", choices=["mp", "ray"])
    p.add_argument("--log-level", default="info")


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        k: v for k, v in vars(args).items() if v is not None and k in Settings.model_fields
    }
    return Settings(**overrides)


def cmd_prepare_model(args: argparse.Namespace) -> int:
    from guard_service import embedding
    from guard_service.model_prep import prepare_model

    print(f"embedder ready: {embedding.prepare()}")

    settings = Settings(**({"fixture": args.fixture} if args.fixture else {}))
    if settings.fixture is not None and settings.model is None:
        from guard_service.fixtures.merge import prepare_fixture

        prepare_model(settings.base_model_path(), force=args.force)
        prepare_fixture(settings.fixture, settings.base_model_path(), settings.resolved_model_path())
        return 0
    if settings.model is not None:
        if not (settings.model / "config.json").is_file():
            print(f"GUARD_MODEL={settings.model} is not an HF model folder (no config.json)", file=sys.stderr)
            return 2
        print(f"using GUARD_MODEL={settings.model}; nothing to prepare")
        return 0
    prepare_model(settings.resolved_model_path(), force=args.force)
    return 0


# oneDNN (torch's CPU kernels) keeps a compiled primitive per input shape, up to 1,024 by default; every new
# batch shape adds one, and the engine worker's RSS grew with them for as long as the soak ran (+6.5% in ten
# minutes). Sixteen held it flat (-1.8%; 3,382 requests against 3,548 in the same soak); an operator's value wins.
ONEDNN_CACHE = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")


def cmd_serve(args: argparse.Namespace) -> int:
    from guard_service.metrics import multiprocess

    os.environ.setdefault(*ONEDNN_CACHE)  # before torch runs a kernel here or in the engine's processes
    settings = _settings_from(args)
    # Before anything imports prometheus_client (vLLM does): worker counts then reach /metrics.
    multiprocess.prepare(settings.metrics_dir)

    import uvicorn

    from guard_service.api.app import create_app
    from guard_service.api.http_protocol import with_head_timeout

    if not (settings.resolved_model_path() / "config.json").is_file():
        print(f"no model at {settings.resolved_model_path()}: run `guard-service prepare-model`", file=sys.stderr)
        return 2
    import signal

    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=args.log_level,
                                           timeout_graceful_shutdown=settings.drain_s,
                                           timeout_keep_alive=settings.keep_alive_s,
                                           http=with_head_timeout(settings.head_timeout_s)))
    # uvicorn drains on SIGTERM/SIGINT, then raises the signal again so that the process dies by it; the exit
    # status is ours instead: 0 after a drain, non-zero when the engine died (a supervisor restarts it).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    return app.state.exit_code


def _store():
    settings = Settings()
    from guard_service.store.base import open_configured

    return settings, open_configured(settings)


def cmd_forget(args: argparse.Namespace) -> int:
    """Writes straight to the shared store; every running server picks the request up and compiles it."""
    import getpass

    from pydantic import ValidationError

    from guard_service.errors import ServiceError
    from guard_service.policy.request import UnlearningRequest
    from guard_service.service import submit

    settings, store = _store()
    try:
        spec = UnlearningRequest(target=args.target, kind=args.kind, aliases=args.alias, facts=args.fact,
                                 description=args.description, example_prompts=args.example,
                                 protected_paths=args.protected_path, action=args.action, mode=args.mode,
                                 requested_by=args.requested_by or getpass.getuser(), reason=args.reason)
        request_id = submit(store, settings, spec, f"cli:{getpass.getuser()}")
    except (ValidationError, ServiceError) as exc:
        print(f"rejected: {exc}", file=sys.stderr)
        return 2
    print(request_id)
    return 0


def cmd_policies_list(args: argparse.Namespace) -> int:
    _, store = _store()
    rows = store.list(args.status)
    print(f"{'id':18} {'status':10} {'active':>6} {'latest':>6}  target")
    for r in rows:
        print(f"{r.id:18} {r.status.value:10} {r.active_version or '-':>6} {r.latest_version:>6}  {r.target}"
              + ("  [shadow]" if r.spec.get("mode") == "shadow" else "")
              + (f"  ({r.last_error})" if r.last_error else ""))
    return 0


def cmd_policies_recompile(args: argparse.Namespace) -> int:
    """New versions compiled for the model served now; a running server compiles them within a poll."""
    import getpass

    from guard_service.errors import ServiceError
    from guard_service.service import recompile
    from guard_service.store.base import Status

    _, store = _store()
    ids = list(args.ids)
    if args.all:
        ids += [r.id for r in store.list(Status.active)] + [r.id for r in store.list(Status.failed)]
    if not ids:
        print("name request ids or pass --all", file=sys.stderr)
        return 2
    for request_id in dict.fromkeys(ids):
        try:
            version = recompile(store, request_id, f"cli:{getpass.getuser()}")
        except ServiceError as exc:
            print(f"{request_id}: {exc.message}", file=sys.stderr)
            return 2
        print(f"{request_id} v{version} pending")
    return 0


def cmd_policies_show(args: argparse.Namespace) -> int:
    """A request's versions with their impact previews (predicted collateral and the prompts it flags)."""
    from guard_service.errors import ServiceError
    from guard_service.service import require

    _, store = _store()
    try:
        row = require(store, args.id)
    except ServiceError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    print(f"{row.id}  {row.target}  status={row.status.value}  active=v{row.active_version or '-'}"
          + ("  [shadow]" if row.spec.get("mode") == "shadow" else ""))
    for v in store.versions(args.id):
        preview = (v.manifest or {}).get("preview") or {}
        rate = f"collateral {preview['rate']:.1%} ({preview['flagged']}/{preview['total']})" if "rate" in preview \
            else preview.get("error", "no preview")
        print(f"  v{v.version:<3} {v.status.value:10} {rate}" + (f"  ({v.error})" if v.error else ""))
        for hit in preview.get("top", []):
            print(f"        {hit['score']:.3f}  [{hit['set']}] {hit['text']}")
    return 0


def cmd_policies_activate(args: argparse.Namespace) -> int:
    """Enforce a held version; over GUARD_MAX_COLLATERAL only with --force (audited under your user name)."""
    import getpass

    from guard_service.errors import ServiceError
    from guard_service.service import activate

    settings, store = _store()
    try:
        row = activate(store, settings, args.id, args.version, args.force, f"cli:{getpass.getuser()}")
    except ServiceError as exc:
        print(exc.message, file=sys.stderr)
        for hit in exc.extra.get("collisions", []):
            print(f"  {hit['score']:.3f}  [{hit['set']}] {hit['text']}", file=sys.stderr)
        return 2
    print(f"{row.id} v{row.active_version} active")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    _, store = _store()
    result = store.verify_audit()
    if result.ok:
        print(f"audit chain intact: {result.rows} rows")
        return 0
    print(f"audit chain BROKEN at row {result.first_bad_seq}: {result.reason}", file=sys.stderr)
    return 1


def cmd_store_migrate(args: argparse.Namespace) -> int:
    """One box's SQLite store into a PostgreSQL store, verified (see store/migrate.py)."""
    from guard_service.store.migrate import migrate

    try:
        done = migrate(args.source, args.destination, Settings().data_dir.resolve())
    except ValueError as exc:
        print(f"not migrated: {exc}", file=sys.stderr)
        return 2
    print(f"migrated {done.requests} requests, {done.versions} versions, {done.files} artifact files and "
          f"{done.audit_rows} audit rows (chain verified; last hash {done.last_hash})")
    if done.missing_artifacts:
        print(f"no files for: {', '.join(done.missing_artifacts)} (recompile them)", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import asyncio

    from guard_service.evaluation.runner import run_suites

    if not args.data.is_dir():
        print(f"benchmark data not found at {args.data} (see ../shared/data/MANIFEST.md); pass --data",
              file=sys.stderr)
        return 2
    if args.suite != ["fixture"] and not args.admin_token:
        print("--admin-token (or GUARD_EVAL_ADMIN_TOKEN) is needed: the evaluation submits unlearning requests "
              "and asks unguarded questions through the audited admin bypass", file=sys.stderr)
        return 2
    asyncio.run(run_suites(args))
    return 0


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    from pathlib import Path

    from guard_service.evaluation.datasets import DEFAULT_DATA

    p = sub.add_parser("eval", help="measure forgetting and utility on TOFU, MUSE and Harry Potter over HTTP")
    from guard_service.evaluation.suites import SUITES

    p.add_argument("--suite", action="append", required=True, choices=list(SUITES),
                   help="repeatable; `fixture` scores the TOFU fixture models in-process (truth ratio)")
    p.add_argument("--base-url", default=os.environ.get("GUARD_EVAL_BASE_URL", "http://127.0.0.1:8000"))
    p.add_argument("--admin-token", default=os.environ.get("GUARD_EVAL_ADMIN_TOKEN"))
    p.add_argument("--api-key", default=os.environ.get("GUARD_EVAL_API_KEY"),
                   help="a client key for /v1 when the server has GUARD_API_KEYS")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("GUARD_BENCHMARK_DATA", DEFAULT_DATA)))
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--action", choices=["steer", "refuse"], help="override each suite's policy action")
    p.add_argument("--limit", type=int, help="at most N prompts per prompt set (a quick smoke run)")
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--stream", action="store_true",
                   help="ask every question streamed (what a streaming client receives: hold mode's released text)")


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="guard-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare-model", help="convert the embedded GGUF model into an HF folder")
    prep.add_argument("--force", action="store_true", help="convert again even if already prepared")
    prep.add_argument("--fixture", help="also merge an evaluation fixture adapter (fixtures/<name>/), e.g. tofu")
    _serve_parser(sub)
    _eval_parser(sub)
    forget = sub.add_parser("forget", help="submit an unlearning request to the shared policy store")
    forget.add_argument("--target", required=True)
    forget.add_argument("--kind", default="entity", choices=["entity", "topic", "document", "capability"])
    forget.add_argument("--alias", action="append", default=[])
    forget.add_argument("--fact", action="append", default=[])
    forget.add_argument("--example", action="append", default=[], help="an example prompt to block")
    forget.add_argument("--description", default="")
    forget.add_argument("--protected-path", action="append", default=[], help="file or folder under indexes/")
    forget.add_argument("--action", default="steer", choices=["steer", "refuse"])
    forget.add_argument("--mode", default="enforce", choices=["enforce", "shadow"],
                        help="shadow: scored and counted on live traffic, enforced nowhere (PATCH mode=enforce)")
    forget.add_argument("--requested-by")
    forget.add_argument("--reason", default="")
    policies = sub.add_parser("policies", help="inspect policies")
    psub = policies.add_subparsers(dest="policies_command", required=True)
    plist = psub.add_parser("list", help="list unlearning requests and their status")
    plist.add_argument("--status", choices=["pending", "compiling", "active", "held", "failed", "revoked", "expired"])
    pshow = psub.add_parser("show", help="a request's versions and their impact previews")
    pshow.add_argument("id")
    pactivate = psub.add_parser("activate", help="enforce a held version (its impact preview is over the limit)")
    pactivate.add_argument("id")
    pactivate.add_argument("version", type=int)
    pactivate.add_argument("--force", action="store_true", help="activate over GUARD_MAX_COLLATERAL (audited)")
    precompile = psub.add_parser("recompile", help="compile requests again for the model served now")
    precompile.add_argument("ids", nargs="*", help="unlearning request ids")
    precompile.add_argument("--all", action="store_true", help="every active and failed request")
    store = sub.add_parser("store", help="the policy store")
    ssub = store.add_subparsers(dest="store_command", required=True)
    smigrate = ssub.add_parser("migrate", help="copy a SQLite store into an empty PostgreSQL store, verified")
    smigrate.add_argument("--from", dest="source", required=True, help="sqlite:///… (relative to GUARD_DATA_DIR)")
    smigrate.add_argument("--to", dest="destination", required=True, help="postgresql://user@host:port/db")
    audit = sub.add_parser("audit", help="the audit log")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    asub.add_parser("verify", help="check the hash chain of the whole audit log (exit 1 where it was edited)")
    args = parser.parse_args(argv)
    if args.command == "policies":
        return {"list": cmd_policies_list, "recompile": cmd_policies_recompile, "show": cmd_policies_show,
                "activate": cmd_policies_activate}[args.policies_command](args)
    if args.command == "audit":
        return cmd_audit_verify(args)
    if args.command == "store":
        return cmd_store_migrate(args)
    handlers = {"prepare-model": cmd_prepare_model, "serve": cmd_serve, "forget": cmd_forget, "eval": cmd_eval}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
