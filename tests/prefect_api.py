"""What the Prefect API holds of a flow run, read back as the UI reads it: its log lines
and its artifacts (the flow tests' ephemeral API, or the infra tests' server)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from uuid import UUID


def flow_run_logs(flow_run_id: UUID | str) -> list[Any]:
    """Every log line of the flow run (its task runs' included), oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    only = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(str(flow_run_id))]))
    logs: list[Any] = []
    with get_client(sync_client=True) as client:
        while page := client.read_logs(only, limit=200, offset=len(logs)):
            logs += page
    return sorted(logs, key=lambda log: log.timestamp)


def wait_for_logs(
    flow_run_id: UUID | str, until: Callable[[list[str]], bool], timeout: float = 30
) -> list[str]:
    """The flow run's log messages once ``until`` holds of them (they are sent in
    batches, in the background); whatever arrived after ``timeout`` seconds."""
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # this process's batch, when the run ran here
    deadline = time.monotonic() + timeout
    while True:
        messages = [log.message for log in flow_run_logs(flow_run_id)]
        if until(messages) or time.monotonic() > deadline:
            return messages
        time.sleep(1)


def flow_run_artifacts(flow_run_id: UUID | str) -> dict[str, Any]:
    """The flow run's artifacts by key (the latest of a key)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    only = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(str(flow_run_id))]))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=only, limit=200)
    return {a.key: a for a in sorted(artifacts, key=lambda a: a.created)}
