"""Emitting the Prefect events the flows send (their names and resource:
:mod:`slmops.tasks.core.events`).

``slmops.feedback.retrain-due`` (``flows/ingest_feedback.py``): the automation of
``retrain/weekly`` starts a retrain with ``trigger=feedback``.
``slmops.monitoring.alert`` (``flows/monitor.py``): with ``monitoring.retrain_on_drift``
an automation starts a retrain with ``trigger=drift`` (``flows/deployments.py``).
``tasks/`` never talks to Prefect: the flows emit these from what the steps return.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prefect.events import emit_event

log = logging.getLogger(__name__)


# emit(event name, resource, payload) -> event id or None (tests pass a recorder).
Emitter = Callable[[str, dict[str, str], dict[str, Any]], str | None]


def emit_prefect_event(event: str, resource: dict[str, str], payload: dict[str, Any]) -> str | None:
    """Emit a Prefect event (what a Prefect automation reacts to); its id, or None when
    Prefect emits nothing here. Never raises: the webhook and the report still stand."""
    try:
        emitted = emit_event(event=event, resource=resource, payload=payload)
    except Exception as exc:
        log.warning("Prefect event %s not emitted: %s", event, type(exc).__name__)
        return None
    return str(emitted.id) if emitted is not None else None
