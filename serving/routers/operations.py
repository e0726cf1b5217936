"""What operators and load balancers ask: ``/health``, ``/model``, ``/stats``,
``/metrics`` (Prometheus) and ``POST /admin/reload`` (admin key). The reads need a key
(any role) when ``serve.protect_reads`` is on; ``/health`` never does and tells nothing
private (no texts, no keys, credentials masked in its error)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

from slmops.serving.auth import AUTH_RESPONSES, requires
from slmops.serving.batcher import BatchStats
from slmops.serving.context import ServiceDep
from slmops.serving.schemas import (
    BatchingStats,
    HealthResponse,
    ModelResponse,
    ReloadResponse,
    StatsResponse,
)
from slmops.tasks.feedback.keys import Role

READ = requires(Role.client, read=True)


async def health(service: ServiceDep) -> Any:
    # async: a plain def would cost every health probe a worker-thread hop.
    holder = service.holder
    loaded = holder.current
    body = HealthResponse(
        status=holder.status,
        model_name=holder.name,
        model_version=loaded.version if loaded else None,
        loaded_at=loaded.loaded_at if loaded else None,
        last_checked_at=holder.last_checked_at,
        last_error=holder.last_error,
        model_format=loaded.format if loaded else None,
        format_warning=loaded.format_warning if loaded else None,
        prediction_backlog=(
            service.prediction_log.stats().backlog if service.prediction_log is not None else None
        ),
    )
    # 503 without a model, so a load balancer sends no traffic here yet.
    code = 200 if loaded is not None else 503
    return JSONResponse(body.model_dump(mode="json"), status_code=code)


async def stats(service: ServiceDep) -> StatsResponse:
    batcher, batching = service.batcher, service.serve.batching
    counters = (batcher.stats if batcher is not None else BatchStats()).as_dict()
    return StatsResponse(
        batching=BatchingStats(
            enabled=batcher is not None,
            max_batch=batching.max_batch,
            max_wait_ms=batching.max_wait_ms,
            queue_size=batching.queue_size,
            queue_depth=batcher.queue_depth() if batcher is not None else 0,
            **counters,
        )
    )


async def prometheus_metrics(service: ServiceDep) -> Response:
    body, content_type = service.metrics.render()
    return Response(content=body, media_type=content_type)


async def model(service: ServiceDep) -> ModelResponse:
    loaded = service.served()
    return ModelResponse(
        name=loaded.name,
        version=loaded.version,
        run_id=loaded.run_id,
        task=loaded.task.name.value,
        labels=loaded.label_set,
        loaded_at=loaded.loaded_at,
        source=loaded.source,
        format=loaded.format,
        requested_format=loaded.requested_format,
        format_warning=loaded.format_warning,
    )


def reload(service: ServiceDep) -> Any:
    holder = service.holder
    outcome = holder.check(force=True)
    body = ReloadResponse(
        previous_version=outcome.previous_version,
        version=outcome.version,
        changed=outcome.changed,
        status=holder.status,
        error=outcome.error,
    )
    # 502: the registry or the version's artifacts failed us, not the request.
    code = 502 if outcome.error else 200
    return JSONResponse(body.model_dump(mode="json"), status_code=code)


def add_routes(app: FastAPI) -> None:
    """Register this module's endpoints on ``app``."""
    app.add_api_route(
        "/health",
        health,
        methods=["GET"],
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse, "description": "No model loaded."}},
        summary="Liveness and readiness",
    )
    app.add_api_route(
        "/stats",
        stats,
        methods=["GET"],
        response_model=StatsResponse,
        dependencies=[READ],
        responses=AUTH_RESPONSES,
        summary="Micro-batching counters",
    )
    app.add_api_route(
        "/metrics",
        prometheus_metrics,
        methods=["GET"],
        dependencies=[READ],
        # Prometheus text, not JSON: left out of the OpenAPI schema (README: Monitoring).
        include_in_schema=False,
    )
    app.add_api_route(
        "/model",
        model,
        methods=["GET"],
        response_model=ModelResponse,
        dependencies=[READ],
        responses=AUTH_RESPONSES,
        summary="The served model version",
    )
    app.add_api_route(
        "/admin/reload",
        reload,
        methods=["POST"],
        response_model=ReloadResponse,
        dependencies=[requires(Role.admin)],
        responses={
            502: {"model": ReloadResponse, "description": "The reload failed; old model kept."},
            **AUTH_RESPONSES,
        },
        summary="Check the champion alias now and swap if it moved",
    )
