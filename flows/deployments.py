"""Register the ``retrain``, ``ingest_feedback`` and ``monitor`` deployments on a Prefect server.

``retrain/weekly`` runs on a cron schedule, ``ingest_feedback/hourly`` on an
interval, ``monitor/scheduled`` on the interval (or cron) of the params file's
``monitoring`` section; all run on a work pool (a process pool is created when the server
has none of that name) from the source of this checkout, and their parameters
can be edited in the Prefect UI before a run (Run → Custom run). Each deployment runs
one flow run at a time: a second one waits for the first (concurrency limit 1,
collision strategy ENQUEUE; ``make deploy`` sets it). Run it with
``make deploy`` (or ``python -m slmops.flows.deployments --help``) once the services
are up (``make services``) and ``PREFECT_API_URL`` points at the server.
``--params`` points the deployments at another project's ``params.yaml`` (its
data, stores and settings) while the code still comes from ``--root``. On a
Docker or Kubernetes pool, ``--root`` is where the code lies inside the image;
see the README's scale-out section.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.exceptions import ObjectNotFound

from slmops.tasks.core.config import load_params

REPO = Path(__file__).resolve().parents[1]
RETRAIN_ENTRYPOINT = "flows/retrain.py:retrain"
INGEST_ENTRYPOINT = "flows/ingest_feedback.py:ingest_feedback_flow"
MONITOR_ENTRYPOINT = "flows/monitor.py:monitor"
DEFAULT_POOL = "slmops-process"
# One run of each deployment at a time; a run started while one is going waits in the
# state AwaitingConcurrencySlot and starts after it (queued, never dropped). Each flow
# writes shared state: the labeled data, the registry, the report folders.
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


@dataclass(frozen=True)
class Schedules:
    """When the deployments run (defaults: retrain Mondays 03:00 UTC, ingestion hourly,
    monitoring as ``monitoring.schedule_*`` of the params file says: hourly)."""

    retrain_cron: str = "0 3 * * 1"
    ingest_every_s: int = 3600
    monitor_every_s: int | None = None  # None: monitoring.schedule_every_seconds
    monitor_cron: str | None = None  # None: monitoring.schedule_cron (if set, wins)


def ensure_pool(name: str) -> bool:
    """Create a process work pool ``name`` unless the server has a pool of that name
    (of any type: a Docker or Kubernetes pool made beforehand is used as it is);
    True if created."""
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=ProcessWorker.type,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    description="SLMOps flows as subprocesses of a worker (infra/services.sh)",
                )
            )
            return True
    return False


def deploy_all(
    root: Path = REPO,
    *,
    params_path: Path | None = None,
    pool: str = DEFAULT_POOL,
    schedules: Schedules = Schedules(),
    paused: bool = False,
) -> dict[str, str]:
    """Create or update the deployments; returns ``{"flow/deployment": id}``.

    ``root`` is the checkout the worker runs the flows from; ``params_path`` the
    params file the runs read by default (default: ``root/params.yaml``), so a
    project elsewhere can use this checkout's code. ``paused`` registers the
    schedules switched off: runs start only when asked for (UI, API,
    ``run_deployment``, or ingestion triggering a retrain).
    """
    root = Path(root).resolve()
    params_file = Path(params_path).resolve() if params_path else root / "params.yaml"
    if not params_file.is_file():
        raise FileNotFoundError(f"{params_file}: no such params file")
    ensure_pool(pool)
    monitor_schedule = _monitor_schedule(params_file, schedules)
    deployed = {}
    for entrypoint, name, schedule, parameters, description in (
        (
            RETRAIN_ENTRYPOINT,
            "weekly",
            {"cron": schedules.retrain_cron},
            {"params_path": str(params_file), "trigger": "schedule"},
            "Retrain on the current labeled data; promote if the gate agrees.",
        ),
        (
            INGEST_ENTRYPOINT,
            "hourly",
            {"interval": schedules.ingest_every_s},
            {"params_path": str(params_file)},
            "Ingest user feedback into the labeled data; retrain past a threshold.",
        ),
        (
            MONITOR_ENTRYPOINT,
            "scheduled",
            monitor_schedule,
            {"params_path": str(params_file)},
            "Compare the champion's live predictions with its test-set predictions; "
            "alert (webhook, Prefect event slmops.monitoring.alert) when a check fires.",
        ),
    ):
        # A local folder as the source: the deployment's pull step runs the flow
        # in that folder (no copy, no git clone), so code changes apply at the next run.
        flow = Flow.from_source(source=str(root), entrypoint=entrypoint)
        deployment = flow.to_deployment(
            name=name,
            parameters=parameters,
            description=description,
            paused=paused,
            tags=["slmops"],
            work_pool_name=pool,
            concurrency_limit=ONE_AT_A_TIME,
            **schedule,
        )
        deployed[f"{flow.name}/{name}"] = str(deployment.apply(work_pool_name=pool))
    return deployed


def _monitor_schedule(params_file: Path, schedules: Schedules) -> dict[str, Any]:
    """``{"cron": ...}`` or ``{"interval": ...}`` for ``monitor/scheduled``: the command
    line's, else the params file's ``monitoring.schedule_cron`` / ``schedule_every_seconds``."""
    if schedules.monitor_cron:
        return {"cron": schedules.monitor_cron}
    if schedules.monitor_every_s:
        return {"interval": schedules.monitor_every_s}
    cfg = load_params(params_file).monitoring
    if cfg.schedule_cron:
        return {"cron": cfg.schedule_cron}
    return {"interval": cfg.schedule_every_seconds}


def main(argv: list[str] | None = None) -> None:
    """``python -m slmops.flows.deployments``: register the deployments."""
    parser = argparse.ArgumentParser(
        prog="python -m slmops.flows.deployments", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO,
        help=f"checkout the worker runs the flows from (default: {REPO})",
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=None,
        help="params file the runs read (default: ROOT/params.yaml)",
    )
    parser.add_argument(
        "--pool",
        default=DEFAULT_POOL,
        help="work pool (created as a process pool when the server has none of that name)",
    )
    parser.add_argument(
        "--retrain-cron",
        default=Schedules.retrain_cron,
        help="cron schedule of retrain/weekly (UTC)",
    )
    parser.add_argument(
        "--ingest-every",
        type=int,
        default=Schedules.ingest_every_s,
        help="seconds between feedback ingestions",
    )
    parser.add_argument(
        "--monitor-every",
        type=int,
        default=None,
        help="seconds between monitoring runs (default: monitoring.schedule_every_seconds, 3600)",
    )
    parser.add_argument(
        "--monitor-cron",
        default=None,
        help="cron schedule of monitor/scheduled instead of the interval (UTC; default: "
        "monitoring.schedule_cron)",
    )
    parser.add_argument(
        "--paused",
        action="store_true",
        help="register the schedules switched off (manual runs only)",
    )
    args = parser.parse_args(argv)
    deployed = deploy_all(
        args.root,
        params_path=args.params,
        pool=args.pool,
        schedules=Schedules(
            args.retrain_cron, args.ingest_every, args.monitor_every, args.monitor_cron
        ),
        paused=args.paused,
    )
    for name, deployment_id in deployed.items():
        print(f"deployed {name} ({deployment_id}) on work pool {args.pool}")


if __name__ == "__main__":
    main()
