"""The FastAPI application: one vLLM engine per process, OpenAI routes, admin routes, health."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from guard_service import __version__
from guard_service.api import routes_admin, routes_health, routes_metrics, routes_openai
from guard_service.api.errors import error_response, install_error_handlers
from guard_service.config import Settings
from guard_service.engine import EngineHolder
from guard_service.policy.compiler import CompileContext
from guard_service.policy.scheduler import CompileScheduler
from guard_service.runtime.guard import Guard
from guard_service.runtime.logits_processor import FQCN as GUARD_PROCESSOR
from guard_service.runtime.registry import PolicyRegistry
from guard_service.serving.ask import engine_asker
from guard_service.store.sqlite import PolicyStore

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        holder = EngineHolder(settings, logits_processors=[GUARD_PROCESSOR])
        store = PolicyStore(settings.path(settings.store_path))
        registry = PolicyRegistry(store, settings.refresh_interval_s)
        registry.refresh()  # a restart enforces every active policy before the first request

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
                                     on_compiled=lambda *_: registry.refresh())
        app.state.engine, app.state.store, app.state.registry, app.state.scheduler = holder, store, registry, scheduler
        app.state.guard = Guard(settings, registry, store)
        holder.start()
        tasks = [asyncio.create_task(registry.run(), name="policy-registry"),
                 asyncio.create_task(scheduler.run(), name="compile-scheduler")]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            holder.shutdown()
            store.close()

    app = FastAPI(title="guard-service", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible LLM serving with inference-time unlearning.")
    app.state.settings = settings
    install_error_handlers(app)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > settings.max_request_bytes:
            return error_response(413, f"request body of {size} bytes exceeds {settings.max_request_bytes}",
                                  code="request_too_large")
        return await call_next(request)

    app.include_router(routes_health.router)
    app.include_router(routes_openai.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_metrics.router)

    @app.get("/", include_in_schema=False)
    async def root() -> JSONResponse:
        return JSONResponse({"service": "guard-service", "version": __version__, "docs": "/docs"})

    return app
