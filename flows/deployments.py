"""Register the ``retrain``, ``ingest_feedback`` and ``monitor`` deployments on a Prefect server.

``retrain/weekly`` runs on a cron schedule, ``ingest_feedback/hourly`` on an
interval, ``monitor/scheduled`` on the interval (or cron) of the params file's
``monitoring`` section; all run on a work pool (a process pool is created when the server
has none of that name) from the source of this checkout. Each deployment runs
one flow run at a time: a second one waits for the first (concurrency limit 1,
collision strategy ENQUEUE). ``retrain/weekly`` gets an automation on the ingestion's
event ``slmops.feedback.retrain-due`` (``trigger=feedback``) and, with
``monitoring.retrain_on_drift``, one on the monitor's ``slmops.monitoring.alert``
(``trigger=drift``); its schedule's runs say ``trigger=schedule``, the Run button's
``manual``. Parameters are typed (``flows/parameters.py``) and checked by the server;
the run form's ``profile`` is a choice of the params file's profiles. Run it with
``make deploy`` (or ``python -m slmops.flows.deployments --help``) once the services
are up (``make services``) and ``PREFECT_API_URL`` points at the server.
``--params`` points the deployments at another project's ``params.yaml`` (its
data, stores and settings) while the code still comes from ``--root``. On a
Docker or Kubernetes pool, ``--root`` is where the code lies inside the image;
see the README's scale-out section. ``--write-prefect-yaml`` writes ``prefect.yaml``
from the same specs, for ``prefect deploy --all``.
"""

from __future__ import annotations

import argparse
import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron, Interval, Schedule
from prefect.utilities.callables import ParameterSchema

from slmops.flows.parameters import Trigger, with_profile_choices
from slmops.tasks.core.config import Params, load_params
from slmops.tasks.core.events import DRIFT_ALERT, RETRAIN_DUE, REVIEW_ANNOTATED, model_resource

REPO = Path(__file__).resolve().parents[1]
RETRAIN_ENTRYPOINT = "flows/retrain.py:retrain"
INGEST_ENTRYPOINT = "flows/ingest_feedback.py:ingest_feedback_flow"
MONITOR_ENTRYPOINT = "flows/monitor.py:monitor"
DEFAULT_POOL = "slmops-process"
PREFECT_YAML = REPO / "prefect.yaml"
# One run of each deployment at a time; a run started while one is going waits in the
# state AwaitingConcurrencySlot and starts after it (queued, never dropped). Each flow
# writes shared state: the labeled data, the registry, the report folders.
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
# What an automation passes on from the event it reacts to (Prefect renders the
# templates from the event; a lone expression keeps its JSON type, so a null profile stays
# null). The ingestion and the monitor put the params file and profile of their run there.
FROM_EVENT = {
    "params_path": "{{ event.payload.params_path }}",
    "profile": "{{ event.payload.profile }}",
}


@dataclass(frozen=True)
class Schedules:
    """When the deployments run (defaults: retrain Mondays 03:00 UTC, ingestion hourly,
    monitoring as ``monitoring.schedule_*`` of the params file says: hourly)."""

    retrain_cron: str = "0 3 * * 1"
    ingest_every_s: int = 3600
    monitor_every_s: int | None = None  # None: monitoring.schedule_every_seconds
    monitor_cron: str | None = None  # None: monitoring.schedule_cron (if set, wins)


@dataclass(frozen=True)
class Spec:
    """One deployment, as ``make deploy`` registers it and ``prefect.yaml`` lists it."""

    entrypoint: str
    name: str
    description: str
    parameters: dict[str, Any]
    # {"cron": ...} or {"interval": seconds}, and the parameters a scheduled run gets
    schedule: dict[str, Any]
    # DeploymentEventTrigger fields (prefect.yaml's `triggers:` entries): each one an
    # automation that starts a run of this deployment
    triggers: list[dict[str, Any]] = field(default_factory=list)

    def prefect_schedule(self) -> Schedule:
        """The schedule as Prefect's :class:`~prefect.schedules.Schedule`."""
        parameters = self.schedule.get("parameters", {})
        if "cron" in self.schedule:
            return Cron(self.schedule["cron"], parameters=parameters)
        seconds = self.schedule["interval"]
        return Interval(datetime.timedelta(seconds=seconds), parameters=parameters)


def _trigger(
    name: str, event: str, model: str, description: str, parameters: dict[str, Any]
) -> dict:
    """An automation on ``event`` about ``model`` that starts a run with ``parameters``
    (over the deployment's own)."""
    return {
        "name": name,
        "description": description,
        "enabled": True,
        "match": {"prefect.resource.id": model_resource(model)["prefect.resource.id"]},
        "expect": [event],
        "posture": "Reactive",
        "threshold": 1,  # each event starts one run (two at once: two, queued)
        "parameters": parameters,
    }


def deployment_specs(params: Params, params_path: str, schedules: Schedules) -> list[Spec]:
    """The three deployments for the project of ``params`` (its model names the events the
    automations react to); ``params_path`` is what the runs read, as the worker sees it."""
    model = params.registry.model_name
    triggers = [
        _trigger(
            f"retrain {model} on feedback",
            RETRAIN_DUE,
            model,
            f"Ingestion crossed the retrain threshold or the live-accuracy floor ({RETRAIN_DUE})",
            {**FROM_EVENT, "trigger": Trigger.feedback.value},
        )
    ]
    if params.monitoring.retrain_on_drift:
        triggers.append(
            _trigger(
                f"retrain {model} on drift",
                DRIFT_ALERT,
                model,
                f"A monitoring check fired ({DRIFT_ALERT}; monitoring.retrain_on_drift)",
                {**FROM_EVENT, "trigger": Trigger.drift.value},
            )
        )
    # Label Studio's webhook (through the service's /hooks/label-studio): an ingestion,
    # which pulls the annotations first, with the deployment's own parameters.
    ingest_triggers = []
    if params.label_studio.url is not None:
        ingest_triggers.append(
            _trigger(
                f"ingest {model} on annotations",
                REVIEW_ANNOTATED,
                model,
                f"Annotators submitted labels in Label Studio ({REVIEW_ANNOTATED})",
                {},
            )
        )
    return [
        Spec(
            RETRAIN_ENTRYPOINT,
            "weekly",
            "Retrain on the current labeled data; promote if the gate agrees.",
            # The Run button's run records trigger manual; the schedule's, schedule.
            {"params_path": params_path, "trigger": Trigger.manual.value},
            {"cron": schedules.retrain_cron, "parameters": {"trigger": Trigger.schedule.value}},
            triggers,
        ),
        Spec(
            INGEST_ENTRYPOINT,
            "hourly",
            "Ingest user feedback into the labeled data; past a threshold emit "
            f"{RETRAIN_DUE}, which starts retrain/weekly.",
            {"params_path": params_path},
            {"interval": schedules.ingest_every_s},
            ingest_triggers,
        ),
        Spec(
            MONITOR_ENTRYPOINT,
            "scheduled",
            "Compare the champion's live predictions with its test-set predictions; "
            f"alert (webhook, Prefect event {DRIFT_ALERT}) when a check fires.",
            {"params_path": params_path},
            _monitor_schedule(params, schedules),
        ),
    ]


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
    """Create or update the deployments and their automations; returns
    ``{"flow/deployment": id}``.

    ``root`` is the checkout the worker runs the flows from; ``params_path`` the
    params file the runs read by default (default: ``root/params.yaml``), so a
    project elsewhere can use this checkout's code. ``paused`` registers the
    schedules switched off: runs start only when asked for (UI, API,
    ``run_deployment``, an automation). The run form's ``profile`` is a choice of the
    params file's profiles. Registering again replaces the deployments' automations
    (Prefect deletes those a deployment owns and creates them anew).
    """
    root = Path(root).resolve()
    params_file = Path(params_path).resolve() if params_path else root / "params.yaml"
    if not params_file.is_file():
        raise FileNotFoundError(f"{params_file}: no such params file")
    params = load_params(params_file)
    ensure_pool(pool)
    deployed = {}
    for spec in deployment_specs(params, str(params_file), schedules):
        # A local folder as the source: the deployment's pull step runs the flow
        # in that folder (no copy, no git clone), so code changes apply at the next run.
        flow = Flow.from_source(source=str(root), entrypoint=spec.entrypoint)
        deployment = flow.to_deployment(
            name=spec.name,
            parameters=spec.parameters,
            description=spec.description,
            paused=paused,
            tags=["slmops"],
            work_pool_name=pool,
            concurrency_limit=ONE_AT_A_TIME,
            schedules=[spec.prefect_schedule()],
            triggers=[DeploymentEventTrigger(**t) for t in spec.triggers],
            enforce_parameter_schema=True,  # a bad value is an error in the run form
        )
        schema = deployment._parameter_openapi_schema.model_dump(exclude_unset=True)
        deployment._parameter_openapi_schema = ParameterSchema(
            **with_profile_choices(schema, params)
        )
        deployed[f"{flow.name}/{spec.name}"] = str(deployment.apply(work_pool_name=pool))
    return deployed


def prefect_yaml(params_file: Path = REPO / "params.yaml", pool: str = DEFAULT_POOL) -> str:
    """``prefect.yaml`` for ``prefect deploy --all``: the deployments, schedules,
    concurrency limits and automations of :func:`deploy_all`, from the same specs, for
    this checkout's ``params.yaml`` (path relative to the checkout, found at run time in
    the worker's ``SLMOPS_ROOT``)."""
    params = load_params(params_file)
    deployments = [
        {
            "name": spec.name,
            "entrypoint": spec.entrypoint,
            "description": spec.description,
            "tags": ["slmops"],
            "parameters": spec.parameters,
            "work_pool": {"name": pool, "work_queue_name": None, "job_variables": {}},
            "concurrency_limit": {
                "limit": ONE_AT_A_TIME.limit,
                "collision_strategy": ONE_AT_A_TIME.collision_strategy.value,
            },
            "enforce_parameter_schema": True,
            "schedules": [spec.schedule],
            "triggers": spec.triggers,
        }
        for spec in deployment_specs(params, params_file.name, Schedules())
    ]
    config = {
        "name": "slmops",
        "build": None,
        "push": None,
        # The worker runs the flows in the checkout its SLMOPS_ROOT names (infra/services.sh
        # sets it); resolved when a run starts, so the file holds no path of this machine.
        "pull": [
            {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $SLMOPS_ROOT }}"}}
        ],
        "deployments": deployments,
    }
    header = (
        "# `prefect deploy --all` registers what `make deploy` does (flows/deployments.py):\n"
        "# the deployments, their schedules, one run at a time, the automations.\n"
        "# Generated: python -m slmops.flows.deployments --write-prefect-yaml\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False, width=100)


def _monitor_schedule(params: Params, schedules: Schedules) -> dict[str, Any]:
    """``{"cron": ...}`` or ``{"interval": ...}`` for ``monitor/scheduled``: the command
    line's, else the params file's ``monitoring.schedule_cron`` / ``schedule_every_seconds``."""
    if schedules.monitor_cron:
        return {"cron": schedules.monitor_cron}
    if schedules.monitor_every_s:
        return {"interval": schedules.monitor_every_s}
    cfg = params.monitoring
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
    parser.add_argument(
        "--write-prefect-yaml",
        action="store_true",
        help=f"write {PREFECT_YAML.name} (ROOT/{PREFECT_YAML.name}, from ROOT/params.yaml) for "
        "`prefect deploy --all` instead of registering anything",
    )
    args = parser.parse_args(argv)
    if args.write_prefect_yaml:
        target = Path(args.root).resolve() / PREFECT_YAML.name
        target.write_text(prefect_yaml(Path(args.root).resolve() / "params.yaml", args.pool))
        print(f"wrote {target}")
        return
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
