"""The names of the Prefect events the system emits, and the resource they are about.

Plain strings, shared by the emitters (the flows; the prediction service's Label Studio
hook) and the automations that react to them (``flows/deployments.py``); nothing here
talks to Prefect.

- ``slmops.feedback.retrain-due``: ingestion crossed ``feedback.retrain_after_labels`` or
  the live-accuracy floor; the automation of ``retrain/weekly`` starts a retrain.
- ``slmops.monitoring.alert``: a monitoring check fired; with
  ``monitoring.retrain_on_drift`` an automation starts a retrain.
- ``slmops.review.annotated``: Label Studio told the service that annotators submitted
  labels; with ``label_studio.url`` set, an automation of ``ingest_feedback/hourly``
  starts an ingestion, which pulls them.

Each names the model as its resource, so a server shared by several projects starts the
run of the project whose model it is.
"""

from __future__ import annotations

RETRAIN_DUE = "slmops.feedback.retrain-due"
DRIFT_ALERT = "slmops.monitoring.alert"
REVIEW_ANNOTATED = "slmops.review.annotated"


def model_resource(model_name: str, version: str | None = None) -> dict[str, str]:
    """The resource of an event about ``model_name`` (what the automations match on)."""
    resource = {
        "prefect.resource.id": f"slmops.model.{model_name}",
        "prefect.resource.name": model_name,
    }
    if version is not None:
        resource["slmops.model.version"] = str(version)
    return resource
