"""The deployments `make deploy` registers: one flow run of each at a time, the rest queued;
schedules that say they are schedules; the automation that retrains on the ingestion's
event; typed parameters (the params file's profiles as a choice list, checked by the
server); ``prefect.yaml`` made from the same specs."""

import contextlib
import os
import subprocess
import sys

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitStrategy
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL
from pydantic import ValidationError

from slmops.flows.deployments import DEFAULT_POOL, PREFECT_YAML, deploy_all, ensure_pool
from slmops.flows.ingest_feedback import _retrain_route
from slmops.flows.parameters import GateOverrides, Trigger, gate_overrides
from slmops.flows.retrain import retrain
from slmops.tasks.core.events import RETRAIN_DUE, REVIEW_ANNOTATED
from tests.conftest import REPO

NAMES = {"retrain/weekly", "ingest_feedback/hourly", "monitor/scheduled"}


def with_profiles(project, **more):
    """The project's params with two profiles (and ``more`` sections merged in)."""
    path = project / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["profiles"] = {"quick": {"train": {"epochs": 1}}, "steady": {"train": {"epochs": 2}}}
    for section, values in more.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(raw))
    return path


def remove(client, names) -> None:
    """The test API outlives this test: a `retrain/weekly` left there would make every
    later ingest_feedback test start a deployment run instead of a subflow."""
    for name in names:
        with contextlib.suppress(ObjectNotFound):
            client.delete_deployment(client.read_deployment_by_name(name).id)


def test_each_deployment_runs_one_flow_run_at_a_time_and_queues_the_rest(tiny_project):
    deployed = deploy_all(
        REPO, params_path=tiny_project / "params.yaml", pool="slmops-limits", paused=True
    )
    with get_client(sync_client=True) as client:
        try:
            assert set(deployed) == NAMES
            for name in deployed:
                deployment = client.read_deployment_by_name(name)
                assert deployment.global_concurrency_limit.limit == 1, name
                # ENQUEUE: a second run waits (AwaitingConcurrencySlot); CANCEL_NEW drops it.
                strategy = deployment.concurrency_options.collision_strategy
                assert strategy == ConcurrencyLimitStrategy.ENQUEUE, name
                assert deployment.enforce_parameter_schema, name
        finally:
            remove(client, deployed)


def test_schedules_automation_and_profile_choices(tiny_project):
    params_path = with_profiles(tiny_project)
    deploy_all(REPO, params_path=params_path, pool="slmops-typed", paused=True)
    with get_client(sync_client=True) as client:
        try:
            weekly = client.read_deployment_by_name("retrain/weekly")
            # The Run button's run says manual; the schedule's runs say schedule.
            assert weekly.parameters == {"params_path": str(params_path), "trigger": "manual"}
            (schedule,) = weekly.schedules
            assert schedule.schedule.cron == "0 3 * * 1"
            assert schedule.parameters == {"trigger": "schedule"}

            # The automation: the ingestion's event about this model starts a retrain
            # with trigger feedback and the event's params file and profile.
            (automation,) = client.read_resource_related_automations(
                f"prefect.deployment.{weekly.id}"
            )
            assert automation.enabled and automation.trigger.expect == {RETRAIN_DUE}
            assert automation.trigger.match.get("prefect.resource.id") == [
                "slmops.model.slmops-intent"
            ]
            (action,) = automation.actions
            assert action.deployment_id == weekly.id
            assert action.parameters["trigger"] == "feedback"
            assert action.parameters["params_path"] == "{{ event.payload.params_path }}"
            assert _retrain_route("retrain/weekly", {"prefect.resource.id": "x"}) == "deployment"
            resource = {"prefect.resource.id": "slmops.model.slmops-intent"}
            assert _retrain_route("retrain/weekly", resource) == "automation"

            # Every deployed flow: the profile is one of the params file's, or none.
            for name in NAMES:
                schema = client.read_deployment_by_name(name).parameter_openapi_schema
                assert schema["properties"]["profile"]["anyOf"] == [
                    {"title": "profile", "type": "string", "enum": ["quick", "steady"]},
                    {"type": "null"},
                ], name
            # ... and the server refuses another one, before any worker sees the run.
            with pytest.raises(PrefectHTTPStatusError) as refused:
                client.create_flow_run_from_deployment(weekly.id, parameters={"profile": "fast"})
            assert refused.value.response.status_code == 409
            assert "fast" in refused.value.response.text
            run = client.create_flow_run_from_deployment(
                weekly.id, parameters={"profile": "quick", "gate_rules": {"min_accuracy": 0.5}}
            )
            assert run.parameters["profile"] == "quick"
            client.delete_flow_run(run.id)
        finally:
            remove(client, NAMES)
        assert _retrain_route("retrain/weekly", resource) == "subflow"


def test_retrain_on_drift_adds_an_automation_on_the_monitoring_alert(tiny_project):
    params_path = with_profiles(tiny_project, monitoring={"retrain_on_drift": True})
    deploy_all(REPO, params_path=params_path, pool="slmops-drift", paused=True)
    with get_client(sync_client=True) as client:
        try:
            weekly = client.read_deployment_by_name("retrain/weekly")
            owned = client.read_resource_related_automations(f"prefect.deployment.{weekly.id}")
            triggers = {a.actions[0].parameters["trigger"]: a.trigger.expect for a in owned}
            assert triggers == {
                "feedback": {RETRAIN_DUE},
                "drift": {"slmops.monitoring.alert"},
            }
            # Registering again replaces the automations, never adds a second set.
            deploy_all(REPO, params_path=params_path, pool="slmops-drift", paused=True)
            again = client.read_resource_related_automations(f"prefect.deployment.{weekly.id}")
            assert len(again) == 2
        finally:
            remove(client, NAMES)


def test_with_label_studio_the_ingestion_runs_on_its_webhook_event(tiny_project):
    params_path = with_profiles(tiny_project, label_studio={"url": "http://127.0.0.1:8080"})
    deploy_all(REPO, params_path=params_path, pool="slmops-review", paused=True)
    with get_client(sync_client=True) as client:
        try:
            hourly = client.read_deployment_by_name("ingest_feedback/hourly")
            (automation,) = client.read_resource_related_automations(
                f"prefect.deployment.{hourly.id}"
            )
            assert automation.enabled and automation.trigger.expect == {REVIEW_ANNOTATED}
            assert automation.trigger.match.get("prefect.resource.id") == [
                "slmops.model.slmops-intent"
            ]
            # The deployment's own parameters: this project's params file.
            assert automation.actions[0].parameters == {}
            assert hourly.parameters["params_path"] == str(params_path)
        finally:
            remove(client, NAMES)


def test_retrain_parameters_are_typed():
    schema = retrain.parameters.model_dump()
    props = schema["properties"]
    assert set(schema["definitions"]["Trigger"]["enum"]) >= {
        "manual",
        "schedule",
        "feedback",
        "drift",
        "cli",
    }
    assert props["trigger"]["default"] == "manual"
    gate = schema["definitions"]["GateOverrides"]
    assert gate["additionalProperties"] is False
    assert "macro-F1" in gate["properties"]["min_macro_f1_gain"]["description"]
    assert "token_classification" in gate["properties"]["min_entity_f1"]["description"]
    assert props["force"]["description"]
    # A dict still works (callers of the flow function), a typo does not.
    assert gate_overrides({"min_accuracy": 0.5}) == {"min_accuracy": 0.5}
    assert gate_overrides(GateOverrides(alpha=0.1)) == {"alpha": 0.1}
    assert gate_overrides(None) == {}
    with pytest.raises(ValidationError, match="min_acuracy"):
        gate_overrides({"min_acuracy": 0.5})
    with pytest.raises(ValidationError):
        gate_overrides({"min_accuracy": 1.5})
    assert f"flow:{Trigger('feedback')}" == "flow:feedback"
    # The flow itself checks them (its types resolved, not strings: flows/steps.py).
    checked = retrain.validate_parameters({"trigger": "drift", "gate_rules": {"alpha": 0.1}})
    assert checked["trigger"] is Trigger.drift and checked["gate_rules"].alpha == 0.1
    with pytest.raises(Exception, match="trigger"):
        retrain.validate_parameters({"trigger": "sometimes"})


def test_prefect_yaml_is_generated_from_the_specs_make_deploy_uses():
    from slmops.flows.deployments import prefect_yaml

    committed = PREFECT_YAML.read_text()
    assert committed == prefect_yaml(), (
        "prefect.yaml is out of date: python -m slmops.flows.deployments --write-prefect-yaml"
    )
    config = yaml.safe_load(committed)
    weekly = next(d for d in config["deployments"] if d["name"] == "weekly")
    assert weekly["schedules"][0]["parameters"] == {"trigger": "schedule"}
    assert weekly["triggers"][0]["expect"] == [RETRAIN_DUE]
    # No path of the machine that wrote it.
    assert str(REPO) not in committed


@pytest.mark.slow
def test_prefect_deploy_all_registers_the_same_deployments(tmp_path):
    """`prefect deploy --all` on the committed prefect.yaml, against the test API."""
    ensure_pool(DEFAULT_POOL)
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
    }
    prefect = os.path.join(os.path.dirname(sys.executable), "prefect")
    with get_client(sync_client=True) as client:
        try:
            done = subprocess.run(
                [prefect, "--no-prompt", "deploy", "--all"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            for name in NAMES:
                deployment = client.read_deployment_by_name(name)
                assert deployment.global_concurrency_limit.limit == 1, name
                assert deployment.work_pool_name == DEFAULT_POOL
                assert deployment.pull_steps == [
                    {
                        "prefect.deployments.steps.set_working_directory": {
                            "directory": "{{ $SLMOPS_ROOT }}"
                        }
                    }
                ]
            weekly = client.read_deployment_by_name("retrain/weekly")
            assert weekly.schedules[0].parameters == {"trigger": "schedule"}
            (automation,) = client.read_resource_related_automations(
                f"prefect.deployment.{weekly.id}"
            )
            assert automation.trigger.expect == {RETRAIN_DUE}
            assert automation.actions[0].parameters["trigger"] == "feedback"
        finally:
            remove(client, NAMES)
