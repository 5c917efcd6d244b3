"""`GET /metrics`: guard and vLLM metrics of every process of this server, aggregated."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from guard_service.api.auth import protected
from guard_service.metrics import multiprocess

router = APIRouter(tags=["metrics"], dependencies=[Depends(protected("metrics_auth"))])


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    if multiprocess.enabled():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
