"""What the endpoints share: one :class:`Service` per app, kept on ``app.state.service``.

:func:`build_service` makes the parts from the params; the routers reach them
through the :data:`ServiceDep` dependency instead of closures over
``create_app``'s locals.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Request

from slmops.serving.auth import Authenticator
from slmops.serving.batcher import MicroBatcher
from slmops.serving.events import EventForwarder
from slmops.serving.holder import ModelHolder, NoModel, Poller
from slmops.serving.metrics import ServiceMetrics
from slmops.serving.model_source import LoadedModel, ModelSource, RegistrySource
from slmops.serving.predictions import Predictions, ScoredRequest
from slmops.serving.schemas import PredictResponse
from slmops.tasks.core.config import Params, ServeConfig
from slmops.tasks.feedback.keys import KeyStore
from slmops.tasks.feedback.prediction_log import PredictionLog
from slmops.tasks.feedback.store import FeedbackStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    """The parts of one running service."""

    params: Params
    holder: ModelHolder
    store: FeedbackStore
    # Prometheus metrics on a registry of this app's own (GET /metrics).
    metrics: ServiceMetrics
    predictions: Predictions
    # None with serve.batching off: each request calls the model itself.
    batcher: MicroBatcher[ScoredRequest, PredictResponse] | None
    # One inference at a time: torch already spreads one batch over every core,
    # and a Hugging Face fast tokenizer must not be called from two threads at
    # once ("Already borrowed").
    inference_limiter: anyio.CapacityLimiter
    # API keys (in the feedback database) and the shared token: who is calling.
    authenticator: Authenticator
    # Prefect events from webhooks (POST /hooks/label-studio), throttled.
    events: EventForwarder
    # The writer committing predictions after their answers (serve.prediction_log);
    # None with background off: each request commits its own.
    prediction_log: PredictionLog | None = None

    @property
    def serve(self) -> ServeConfig:
        """The ``serve`` section of the params."""
        return self.params.serve

    def served(self) -> LoadedModel:
        """The model to answer with; 503 while none is loaded."""
        try:
            return self.holder.serving()
        except NoModel as exc:
            raise HTTPException(503, str(exc)) from None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The app's lifespan: poll the champion alias and run the batcher and the
        prediction writer until shutdown; then stop taking predictions, commit every
        one queued, and close the store."""
        if not self.authenticator.configured_now():
            log.warning(
                "no API key configured (slmops keys add, or %s / serve.token_file): /feedback, "
                "/review and /admin/reload answer 503",
                self.serve.token_env,
            )
        poller = Poller(self.holder, self.serve.poll_seconds)
        poller.start()
        if self.prediction_log is not None:
            self.prediction_log.start()
        if self.batcher is not None:
            self.batcher.start()
        try:
            yield
        finally:
            if self.batcher is not None:
                await self.batcher.stop()
            await poller.stop()
            await self.events.close()
            if self.prediction_log is not None:
                # After the batcher: every answered batch has queued its rows by now. The
                # writer logs what it could not write (the database down for too long).
                await anyio.to_thread.run_sync(self.prediction_log.close)
            self.store.close()


def build_service(params: Params, model_loader: ModelSource | None = None) -> Service:
    """The parts of a service for ``params``; ``model_loader`` replaces the registry."""
    serve = params.serve
    holder = ModelHolder(model_loader or RegistrySource(params), params.registry.model_name)
    store = FeedbackStore.from_params(params)
    metrics = ServiceMetrics()
    holder.on_load = lambda m: metrics.set_model(m.name, m.version, m.format)
    writing = serve.prediction_log
    prediction_log = (
        PredictionLog(
            store,
            group_ms=writing.group_ms,
            group_rows=writing.group_rows,
            queue_rows=writing.queue_rows,
        )
        if writing.background
        else None
    )
    if prediction_log is not None:
        metrics.watch_prediction_log(prediction_log.stats)
    predictions = Predictions(
        holder,
        store,
        metrics,
        chunk=serve.batching.chunk_size,
        top_k=serve.top_k,
        log=prediction_log,
    )
    batcher = predictions.batcher(serve.batching) if serve.batching.enabled else None
    # The keys share the store's engine (and connection pool), closed with it, and its
    # schema, which opening the store just brought up to date or checked.
    authenticator = Authenticator(params, KeyStore(store.engine, auto_migrate=False))
    return Service(
        params,
        holder,
        store,
        metrics,
        predictions,
        batcher,
        anyio.CapacityLimiter(1),
        authenticator,
        EventForwarder.from_environment(serve.hook_interval_seconds),
        prediction_log,
    )


# async although it never awaits: FastAPI runs a plain `def` dependency on a
# worker thread, one thread hop per request for nothing.
async def _service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(_service)]
