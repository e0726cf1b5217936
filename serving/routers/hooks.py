"""``POST /hooks/label-studio`` (reviewer key): Label Studio's webhook. When annotators
submit or change labels it becomes the Prefect event ``slmops.review.annotated`` about
the served model, on which an automation of ``ingest_feedback/hourly`` starts an
ingestion that pulls them (``make deploy`` with ``label_studio.url`` set). Register it in
Label Studio (``slmops review push`` does, or Settings → Webhooks) with the header
``Authorization: Bearer <a reviewer key>``; the key's principal is recorded in the
event."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException

from slmops.serving.auth import AUTH_RESPONSES, PrincipalDep, requires
from slmops.serving.context import ServiceDep
from slmops.serving.events import NotForwarded, prefect_event
from slmops.serving.schemas import ErrorResponse, HookResponse, LabelStudioHook
from slmops.tasks.core.events import REVIEW_ANNOTATED, model_resource
from slmops.tasks.feedback.keys import Role
from slmops.tasks.labels.label_studio import LABEL_ACTIONS


async def label_studio(
    body: LabelStudioHook, service: ServiceDep, principal: PrincipalDep
) -> HookResponse:
    if body.action not in LABEL_ACTIONS:
        return HookResponse(
            outcome="ignored",
            event=None,
            detail=f"{body.action}: no new or changed label to pull",
        )
    project = body.project or {}
    event = prefect_event(
        REVIEW_ANNOTATED,
        model_resource(service.params.registry.model_name),
        {
            "source": "label-studio",
            "action": body.action,
            "project_id": project.get("id"),
            "project_title": project.get("title"),
            "principal": principal.name if principal else None,
        },
    )
    try:
        forwarded = await service.events.request(event)
    except NotForwarded as exc:
        raise HTTPException(503, f"not forwarded to Prefect: {exc}") from None
    if forwarded.sent:
        return HookResponse(outcome="sent", event=REVIEW_ANNOTATED, at=forwarded.at, detail="sent")
    return HookResponse(
        outcome="scheduled",
        event=REVIEW_ANNOTATED,
        at=forwarded.at,
        detail=f"one event per {service.serve.hook_interval_seconds:g} s: sent at the time given",
    )


def add_routes(app: FastAPI) -> None:
    """Register this module's endpoints on ``app``."""
    app.add_api_route(
        "/hooks/label-studio",
        label_studio,
        methods=["POST"],
        response_model=HookResponse,
        status_code=202,
        dependencies=[requires(Role.reviewer)],
        responses={**AUTH_RESPONSES, 503: {"model": ErrorResponse}},
        summary="Label Studio webhook: annotations submitted → a Prefect event",
    )
