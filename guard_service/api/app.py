"""The FastAPI application: one vLLM engine per process, OpenAI routes, admin routes, health."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from guard_service import __version__
from guard_service.api import routes_admin, routes_health, routes_metrics, routes_openai
from guard_service.api.auth import protected
from guard_service.api.errors import install_error_handlers
from guard_service.api.limits import BodyLimit
from guard_service.compiler.compile import CompileContext
from guard_service.compiler.scheduler import CompileScheduler
from guard_service.config import Settings
from guard_service.engine import EngineHolder
from guard_service.frontend.guard import Guard
from guard_service.frontend.preview import ImpactPreview
from guard_service.frontend.registry import PolicyRegistry
from guard_service.policy.artifacts import remove_stale_staging
from guard_service.serving.ask import engine_asker
from guard_service.store.audit_sink import AuditSink
from guard_service.store.base import open_configured

log = logging.getLogger(__name__)


def _warn_if_open(settings: Settings) -> None:
    if not settings.api_keys:
        log.warning("GUARD_API_KEYS is empty: /v1 is open to anyone who can reach %s:%d (policies scoped to "
                    "tenants apply to every request)", settings.host, settings.port)
    if not settings.admin_tokens:
        log.warning("GUARD_ADMIN_TOKENS is empty: the admin API refuses every write")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    store = open_configured(settings)
    audit = AuditSink(store, settings.audit_queue_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        _warn_if_open(settings)
        holder = EngineHolder(settings)

        async def preload(keys: list[str], active: list[str]) -> bool:
            """New versions into the engine worker's cache between steps, before a request needs them; what is
            no longer enforced out of it."""
            if not holder.ready:
                return False
            await holder.engine.collective_rpc("guard_preload", args=(keys, active))
            return True

        registry = PolicyRegistry(store, settings.refresh_interval_s, settings.resolved_model_path(),
                                  settings.metrics_target_names, f"api:{socket.gethostname()}:{os.getpid()}",
                                  on_new=preload, artifacts_root=settings.path(settings.policies_dir))
        stale = await asyncio.to_thread(remove_stale_staging, settings.path(settings.policies_dir))
        if stale:
            log.warning("removed %d temp dirs that a killed compile or fetch left: %s", len(stale), stale)
        # A restart enforces every active policy (or fails it closed) before the first request.
        await asyncio.to_thread(registry.refresh)

        built: list[CompileContext] = []  # made once, when the engine is first ready

        def compile_context() -> CompileContext | None:
            if not holder.ready:
                return None
            if built:
                return built[0]
            engine = holder.engine
            built.append(CompileContext(
                policies_dir=settings.path(settings.policies_dir), indexes_dir=settings.path(settings.indexes_dir),
                model_dir=settings.resolved_model_path(), served_model_name=settings.served_model_name,
                tokenizer=engine.get_tokenizer(), ask_model=engine_asker(engine, settings.expand_max_tokens),
                max_document_bytes=settings.max_document_bytes))
            return built[0]

        scheduler = CompileScheduler(store, compile_context, settings.refresh_interval_s,
                                     on_compiled=lambda *_: registry.refresh(),
                                     preview=ImpactPreview(settings.resolved_model_path()),
                                     max_collateral=settings.max_collateral, lease_s=settings.compile_lease_s,
                                     model_dir=settings.resolved_model_path())
        app.state.engine, app.state.store, app.state.registry, app.state.scheduler = holder, store, registry, scheduler
        app.state.guard = Guard(settings, registry, audit, tokenizer=lambda: holder.require().get_tokenizer())
        holder.start()

        def engine_died(_: BaseException | None) -> None:
            # In-flight requests already end with 503 engine_dead; the server drains and exits non-zero (also when
            # the engine never started: see EngineHolder.watch).
            app.state.exit_code = 3
            signal.raise_signal(signal.SIGTERM)

        tasks = [asyncio.create_task(registry.run(), name="policy-registry"),
                 asyncio.create_task(scheduler.run(), name="compile-scheduler"),
                 asyncio.create_task(holder.watch(engine_died), name="engine-watch")]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            holder.shutdown()
            await asyncio.to_thread(audit.close)
            store.close()

    docs_open = not settings.docs_auth
    app = FastAPI(title="guard-service", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible LLM serving with inference-time unlearning.",
                  docs_url="/docs" if docs_open else None, redoc_url="/redoc" if docs_open else None,
                  openapi_url="/openapi.json" if docs_open else None)
    app.state.settings, app.state.audit, app.state.exit_code = settings, audit, 0
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)

    app.include_router(routes_health.router)
    app.include_router(routes_openai.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_metrics.router)
    if not docs_open:
        _protected_docs(app)

    @app.get("/", include_in_schema=False)
    async def root() -> JSONResponse:
        return JSONResponse({"service": "guard-service", "version": __version__, "docs": "/docs"})

    return app


def _protected_docs(app: FastAPI) -> None:
    """The schema and its two viewers behind an admin or viewer bearer token (GUARD_DOCS_AUTH)."""
    guard = [Depends(protected("docs_auth"))]

    @app.get("/openapi.json", include_in_schema=False, dependencies=guard)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guard)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="guard-service")

    @app.get("/redoc", include_in_schema=False, dependencies=guard)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="guard-service")
