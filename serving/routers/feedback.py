"""``POST /feedback`` (reviewer key): a reviewer's label for a prediction; ``GET /review``
(reviewer key: it shows other users' texts): the least confident predictions nobody has
reviewed. The reviewer recorded is the key's principal, never a field of the body."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Response, status
from fastapi.responses import JSONResponse

from slmops.serving.auth import AUTH_RESPONSES, PrincipalDep, requires
from slmops.serving.context import ServiceDep
from slmops.serving.model_source import LoadedModel
from slmops.serving.schemas import (
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    LabelScore,
    ReviewItem,
    ReviewResponse,
    UnknownLabelResponse,
)
from slmops.tasks.feedback.keys import Role
from slmops.tasks.feedback.store import (
    InvalidLabel,
    PredictionPending,
    PredictionRecord,
    UnknownLabel,
    UnknownPrediction,
)

MAX_REVIEW_ROWS = 1000
# Retry-After (seconds) on a 503 for predictions the database has not taken yet.
PENDING_RETRY_AFTER = "5"
# The body fields a reviewer's answer can come in (FeedbackRequest's): one per task type.
ANSWER_FIELDS = ("label", "entities")


def _wrong_field(body: FeedbackRequest, loaded: LoadedModel) -> JSONResponse | None:
    """The 422 for an answer in the wrong field (or both) for the served model's task.

    Checked here, not in the request model: the answer depends on the model served.
    """
    task = loaded.task
    want = task.feedback_field
    given = {f for f in ANSWER_FIELDS if getattr(body, f) is not None}
    if given == {want}:
        return None
    what = "missing or null" if want not in given else "sent with the other field"
    return JSONResponse(
        {
            "detail": f"{want} {what}: the served model is {task.name.value}; "
            f"send '{want}' ({task.feedback_shape}) only",
            "valid_labels": loaded.label_set,
        },
        status_code=422,
    )


def feedback(
    body: FeedbackRequest, response: Response, service: ServiceDep, principal: PrincipalDep
) -> Any:
    # The key's principal is the reviewer, whatever the deprecated body field `user` says.
    if principal is None:  # not reached: the route needs a reviewer key
        raise HTTPException(401, "missing API key")
    loaded = service.served()
    wrong = _wrong_field(body, loaded)
    if wrong is not None:
        return wrong
    field = loaded.task.feedback_field
    cell = loaded.task.feedback_cell(body.model_dump(include={field})[field])
    try:
        row, created = service.store.add_feedback(
            body.prediction_id, cell, loaded.label_set, principal.name, task=loaded.task
        )
    except UnknownPrediction as exc:
        raise HTTPException(404, str(exc)) from None
    except PredictionPending as exc:
        # A valid id whose row the database has not taken yet: later, it will.
        raise HTTPException(503, str(exc), headers={"Retry-After": PENDING_RETRY_AFTER}) from None
    except (UnknownLabel, InvalidLabel) as exc:
        return JSONResponse({"detail": str(exc), "valid_labels": exc.known_labels}, status_code=422)
    if not created:
        response.status_code = status.HTTP_200_OK
    return FeedbackResponse(
        feedback_id=row.id,
        prediction_id=row.prediction_id,
        label=row.label,
        kind=row.kind,
        user=row.user,
        created_at=row.created_at,
        created=created,
    )


def _review_item(p: PredictionRecord) -> ReviewItem:
    return ReviewItem(
        prediction_id=p.id,
        text=p.text,
        label=p.label,
        confidence=p.confidence,
        top_k=[LabelScore(**x) for x in p.top_k],
        model_name=p.model_name,
        model_version=p.model_version,
        created_at=p.created_at,
    )


def review(
    service: ServiceDep,
    limit: Annotated[
        int | None,
        Query(ge=1, le=MAX_REVIEW_ROWS, description="Rows (default: serve.review_limit)."),
    ] = None,
    since: Annotated[
        datetime | None,
        Query(description="Only predictions made at or after this time (ISO 8601)."),
    ] = None,
) -> ReviewResponse:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)  # a time without zone is read as UTC
    try:
        # Waits for the predictions answered before this request (the background writer).
        rows = service.store.review_queue(limit or service.serve.review_limit, since=since)
    except PredictionPending as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": PENDING_RETRY_AFTER}) from None
    return ReviewResponse(items=[_review_item(p) for p in rows])


def add_routes(app: FastAPI) -> None:
    """Register this module's endpoints on ``app``."""
    app.add_api_route(
        "/feedback",
        feedback,
        methods=["POST"],
        response_model=FeedbackResponse,
        status_code=201,
        dependencies=[requires(Role.reviewer)],
        responses={
            200: {"model": FeedbackResponse, "description": "Identical feedback already stored."},
            404: {"model": ErrorResponse, "description": "Unknown prediction id."},
            422: {"model": UnknownLabelResponse, "description": "Label not in the label set."},
            **AUTH_RESPONSES,
        },
        summary="Correct or confirm a prediction",
    )
    app.add_api_route(
        "/review",
        review,
        methods=["GET"],
        response_model=ReviewResponse,
        # Always, whatever serve.protect_reads says: the answer holds other users' texts.
        dependencies=[requires(Role.reviewer)],
        responses=AUTH_RESPONSES,
        summary="Unreviewed predictions, least confident first",
    )
