"""The Prefect events the flows emit, and what the deployments' automations react to.

``slmops.feedback.retrain-due``: ingestion crossed ``feedback.retrain_after_labels``
or the live-accuracy floor (``flows/ingest_feedback.py``); the automation of
``retrain/weekly`` starts a retrain with ``trigger=feedback``.
``slmops.monitoring.alert``: a monitoring check fired (``flows/monitor.py``); with
``monitoring.retrain_on_drift`` an automation starts a retrain with ``trigger=drift``.
Both name the model as their resource, so a server shared by several projects starts
the retrain of the project whose model it is (``flows/deployments.py``).
``tasks/`` never talks to Prefect: the flows emit these from what the steps return.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prefect.events import emit_event

log = logging.getLogger(__name__)

RETRAIN_DUE = "slmops.feedback.retrain-due"
DRIFT_ALERT = "slmops.monitoring.alert"

# emit(event name, resource, payload) -> event id or None (tests pass a recorder).
Emitter = Callable[[str, dict[str, str], dict[str, Any]], str | None]


def model_resource(model_name: str, version: str | None = None) -> dict[str, str]:
    """The resource of an event about ``model_name`` (what the automations match on)."""
    resource = {
        "prefect.resource.id": f"slmops.model.{model_name}",
        "prefect.resource.name": model_name,
    }
    if version is not None:
        resource["slmops.model.version"] = str(version)
    return resource


def emit_prefect_event(event: str, resource: dict[str, str], payload: dict[str, Any]) -> str | None:
    """Emit a Prefect event (what a Prefect automation reacts to); its id, or None when
    Prefect emits nothing here. Never raises: the webhook and the report still stand."""
    try:
        emitted = emit_event(event=event, resource=resource, payload=payload)
    except Exception as exc:
        log.warning("Prefect event %s not emitted: %s", event, type(exc).__name__)
        return None
    return str(emitted.id) if emitted is not None else None
