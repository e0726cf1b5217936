"""The deployments `make deploy` registers: one flow run of each at a time, the rest queued."""

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitStrategy

from slmops.flows.deployments import deploy_all
from tests.conftest import REPO


def test_each_deployment_runs_one_flow_run_at_a_time_and_queues_the_rest(tiny_project):
    deployed = deploy_all(
        REPO, params_path=tiny_project / "params.yaml", pool="slmops-limits", paused=True
    )
    with get_client(sync_client=True) as client:
        try:
            assert set(deployed) == {
                "retrain/weekly",
                "ingest_feedback/hourly",
                "monitor/scheduled",
            }
            for name in deployed:
                deployment = client.read_deployment_by_name(name)
                assert deployment.global_concurrency_limit.limit == 1, name
                # ENQUEUE: a second run waits (AwaitingConcurrencySlot); CANCEL_NEW drops it.
                strategy = deployment.concurrency_options.collision_strategy
                assert strategy == ConcurrencyLimitStrategy.ENQUEUE, name
        finally:
            # The test API outlives this test: a `retrain/weekly` left there would make
            # every later ingest_feedback test start a deployment run instead of a subflow.
            for name in deployed:
                client.delete_deployment(client.read_deployment_by_name(name).id)
