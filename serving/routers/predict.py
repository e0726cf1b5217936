"""``POST /predict``: labels for one text or a batch.

Every answer is logged to the feedback store and carries its ``prediction_id``.
With ``serve.batching`` on, the request joins a micro-batch; otherwise it calls
the model itself (one inference at a time).
"""

from __future__ import annotations

import logging

import anyio
from fastapi import FastAPI, HTTPException, Request

from slmops.serving.auth import AUTH_RESPONSES, PrincipalDep, requires
from slmops.serving.batcher import BatcherClosed, QueueFull
from slmops.serving.context import Service, ServiceDep
from slmops.serving.holder import NoModel
from slmops.serving.middleware import ANNOUNCED
from slmops.serving.predictions import Asked, StoreUnavailable
from slmops.serving.schemas import ErrorResponse, PredictRequest, PredictResponse
from slmops.tasks.core.config import ServeConfig
from slmops.tasks.feedback.keys import Role

log = logging.getLogger(__name__)

# Retry-After (seconds) on a 503 for a full batching queue: it drains in milliseconds.
QUEUE_FULL_RETRY_AFTER = "1"


def check_texts(texts: list[str], serve: ServeConfig) -> None:
    """422 for no text or a blank one, 413 for too many or too long (``serve`` limits)."""
    if not texts:
        raise HTTPException(422, "'texts' is empty: send at least one text")
    if len(texts) > serve.max_batch:
        raise HTTPException(
            413,
            f"{len(texts)} texts in one request; the limit is {serve.max_batch} "
            "(serve.max_batch): split the batch",
        )
    for i, text in enumerate(texts):
        where = "text" if len(texts) == 1 else f"texts[{i}]"
        if not text.strip():
            raise HTTPException(422, f"{where} is empty or only whitespace")
        if len(text) > serve.max_text_chars:
            raise HTTPException(
                413,
                f"{where} has {len(text)} characters; the limit is {serve.max_text_chars} "
                "(serve.max_text_chars)",
            )


async def _answer(service: Service, texts: Asked, request: Request) -> PredictResponse:
    batcher = service.batcher
    if batcher is not None:
        if getattr(request.state, ANNOUNCED, False):
            setattr(request.state, ANNOUNCED, False)
            batcher.withdraw()  # it is about to be queued, no longer "arriving"
        return await batcher.submit(texts)
    predictions = service.predictions
    scored = await anyio.to_thread.run_sync(
        predictions.compute, [texts], limiter=service.inference_limiter
    )
    # Queued for the background writer here, without a thread hop, unless that would block.
    answered = predictions.finish_now(scored)
    if answered is None:
        answered = await anyio.to_thread.run_sync(predictions.finish, scored)
    return answered[0]


async def predict(
    body: PredictRequest, request: Request, service: ServiceDep, principal: PrincipalDep
) -> PredictResponse:
    texts = body.all_texts()
    check_texts(texts, service.serve)
    service.served()  # no model: 503 now, without queueing
    asked = Asked(texts, principal.name if principal is not None else None)
    try:
        return await _answer(service, asked, request)
    except QueueFull as exc:
        retry = {"Retry-After": QUEUE_FULL_RETRY_AFTER}
        raise HTTPException(503, str(exc), headers=retry) from None
    except (NoModel, StoreUnavailable, BatcherClosed) as exc:
        raise HTTPException(503, str(exc)) from None
    except Exception as exc:
        if service.batcher is None:  # the batcher logs its failed batches itself
            log.exception("prediction failed")
        raise HTTPException(
            500,
            f"the model failed on the batch holding this request ({type(exc).__name__}); "
            "the service log has the details, and later requests are not affected",
        ) from None


def add_routes(app: FastAPI) -> None:
    """Register this module's endpoints on ``app``."""
    app.add_api_route(
        "/predict",
        predict,
        methods=["POST"],
        response_model=PredictResponse,
        # A key of any role when serve.protect_reads is on; anonymous otherwise.
        dependencies=[requires(Role.client, read=True)],
        responses={
            413: {"model": ErrorResponse, "description": "Too many texts, or a text too long."},
            422: {"description": "Blank text, or neither/both of `text` and `texts`."},
            **AUTH_RESPONSES,
        },
        summary="Classify one text or a batch",
    )
