"""The FastAPI application: one vLLM engine per process, OpenAI routes, admin routes, health."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from guard_service import __version__
from guard_service.api import routes_health, routes_openai
from guard_service.api.errors import error_response, install_error_handlers
from guard_service.config import Settings
from guard_service.engine import EngineHolder

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        holder = EngineHolder(settings)
        app.state.engine = holder
        holder.start()
        try:
            yield
        finally:
            holder.shutdown()

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

    @app.get("/", include_in_schema=False)
    async def root() -> JSONResponse:
        return JSONResponse({"service": "guard-service", "version": __version__, "docs": "/docs"})

    return app
