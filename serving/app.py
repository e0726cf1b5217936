"""The prediction service: the champion model over HTTP, and the feedback that comes back.

Endpoints (OpenAPI at ``/docs``), one router per concern under :mod:`slmops.serving.routers`:

- ``POST /predict``: labels for one text or a batch; every answer is logged
  to the feedback store and carries its ``prediction_id``.
- ``POST /feedback`` (reviewer key): a reviewer's label for a prediction.
- ``GET /review`` (reviewer key): the least confident predictions nobody has reviewed.
- ``GET /health``, ``GET /model``: what is served, and whether reloads work.
- ``GET /stats``: what the micro-batcher did (batch sizes, rejections).
- ``GET /metrics``: Prometheus metrics (:mod:`slmops.serving.metrics`; not in the OpenAPI
  schema).
- ``POST /admin/reload`` (admin key): look at the ``champion`` alias now.

The other parts: request and response bodies (:mod:`~slmops.serving.schemas`),
the served model and its hot swap (:mod:`~slmops.serving.holder`), the two
stages of a prediction (:mod:`~slmops.serving.predictions`) and their
micro-batching (:mod:`~slmops.serving.batcher`), middleware
(:mod:`~slmops.serving.middleware`), API keys and roles, checked before a body is
read (:mod:`~slmops.serving.auth`), and what the endpoints share
(:mod:`~slmops.serving.context`).
"""

from __future__ import annotations

import ipaddress
import logging
import os

import uvicorn
from fastapi import FastAPI
from starlette.middleware.trustedhost import TrustedHostMiddleware

from slmops.serving.auth import Authenticate
from slmops.serving.context import build_service
from slmops.serving.middleware import AnnounceArrivals, LimitBody, RecordRequests, max_body
from slmops.serving.model_source import ModelSource
from slmops.serving.routers import feedback, hooks, operations, predict
from slmops.tasks.core.config import Params, ServeConfig, with_overrides

log = logging.getLogger(__name__)

# The Host header values of a service bound to loopback (an IPv6 literal in brackets).
LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "[::1]"]
# MLflow's HTTP defaults (7 retries with exponential backoff, 120 s timeout) keep a
# poll stuck for minutes when the tracking server is down; the service would
# rather report "degraded" quickly and try again at the next poll. Only the
# server process sets these, and an operator's own values win.
SERVING_MLFLOW_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


def is_loopback(host: str) -> bool:
    """Whether a bind address only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(serve: ServeConfig) -> list[str]:
    """The Host header values the service answers: ``serve.allowed_hosts``, else the
    loopback names for a loopback ``serve.host``, else any (``*``).

    On loopback the check stops DNS rebinding: a web page whose domain re-resolves
    to 127.0.0.1 makes the browser call the service with that domain as its Host.
    """
    if serve.allowed_hosts is not None:
        return serve.allowed_hosts
    return LOOPBACK_HOSTS if is_loopback(serve.host) else ["*"]


def create_app(params: Params, *, model_loader: ModelSource | None = None) -> FastAPI:
    """The FastAPI app serving the champion of ``registry.model_name``.

    ``model_loader`` replaces the MLflow registry as the source of models. The
    model is loaded in the background once the app starts (``/health`` says
    ``loading`` until then) and the alias is polled every ``serve.poll_seconds``.
    """
    service = build_service(params, model_loader)
    app = FastAPI(
        title="SLMOps prediction service",
        version="1",
        description="Serves the `champion` of the MLflow registry and collects feedback "
        "on its answers. Endpoints behind a role need `Authorization: Bearer <key>`: "
        "`client` (reads, when serve.protect_reads is on), `reviewer` (feedback, the "
        "review queue) or `admin` (reload); each role implies the ones before it.",
        lifespan=lambda _app: service.running(),
    )
    app.state.service = service
    if service.batcher is not None:
        app.add_middleware(AnnounceArrivals, batcher=service.batcher)
    app.add_middleware(LimitBody, max_body=max_body(params.serve))
    # Outside LimitBody and the endpoints: a request refused for its key (or its Host)
    # is answered before any of its body is received.
    app.add_middleware(Authenticate, authenticator=service.authenticator)
    app.add_middleware(
        TrustedHostMiddleware, allowed_hosts=allowed_hosts(params.serve), www_redirect=False
    )
    # Added last, so outermost: it also times and counts what the others refuse.
    app.add_middleware(RecordRequests, metrics=service.metrics)
    for routes in (predict, feedback, operations, hooks):
        routes.add_routes(app)
    return app


def run(
    params: Params,
    *,
    host: str | None = None,
    port: int | None = None,
    model_loader: ModelSource | None = None,
) -> None:
    """Serve ``create_app(params)`` with uvicorn on ``serve.host:serve.port`` (or the overrides).

    ``model_loader`` replaces the registry as the source of models (the service
    benchmark serves a model folder through it).
    """
    if host and host != params.serve.host:
        # The default of serve.allowed_hosts depends on the address bound.
        params = with_overrides(params, {"serve": {"host": host}}, "--host")
    host = params.serve.host
    port = port or params.serve.port
    for key, value in SERVING_MLFLOW_HTTP.items():
        os.environ.setdefault(key, value)
    if not is_loopback(host) and not params.serve.protect_reads:
        log.warning(
            "listening on %s with serve.protect_reads false: anyone who can reach it can read "
            "predictions and the review queue",
            host,
        )
    if not is_loopback(host) and params.serve.allowed_hosts is None:
        log.warning(
            "listening on %s with serve.allowed_hosts unset: any Host header is answered; "
            "list the names clients use to reach the service",
            host,
        )
    uvicorn.run(
        create_app(params, model_loader=model_loader), host=host, port=port, log_level="info"
    )
