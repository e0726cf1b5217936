"""The retrain flow end to end with a tiny model: promote, refuse, force, roll back."""

import json

import mlflow
import pytest

from tests.conftest import TINY_LABELS

pytestmark = pytest.mark.slow


def test_retrain_promotes_then_refuses_then_force_and_rollback_are_recorded(project):
    from slmops.flows.retrain import retrain
    from slmops.tasks.core.config import load_params
    from slmops.tasks.registry import ledger
    from slmops.tasks.registry.promotion import CHAMPION, PREVIOUS, alias_version, client, rollback

    params_path = str(project / "params.yaml")
    params = load_params(params_path)
    name = params.registry.model_name

    first = retrain(params_path=params_path, trigger="test")
    assert first["promoted"] and first["version"] == "1"
    assert first["data"]["test"] and first["data"]["labeled"]  # DVC hashes recorded
    mc = client(params)
    assert alias_version(mc, name, CHAMPION) == "1"
    v1 = mc.get_model_version(name, "1")
    assert v1.tags["gate.decision"] == "promoted"
    assert v1.tags["data.test_hash"] == first["data"]["test"]
    assert float(v1.tags["metrics.macro_f1"]) == pytest.approx(first["metrics"]["macro_f1"])
    run = mc.get_run(v1.run_id)
    assert run.data.tags["git.commit"]
    assert "test_accuracy" in run.data.metrics
    assert len(mc.get_metric_history(v1.run_id, "val_macro_f1")) == 3  # one per epoch
    artifacts = {a.path for a in mc.list_artifacts(v1.run_id, "eval")}
    assert "eval/report.json" in artifacts and "eval/metrics.json" in artifacts
    # The registered model loads through MLflow and answers with a known label.
    pipe = mlflow.transformers.load_model(f"models:/{name}@champion")
    assert pipe("my card has not arrived")[0]["label"] in TINY_LABELS
    metrics = json.loads((project / "reports" / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(first["metrics"]["accuracy"])
    # The run worked in a folder of its own, published over the shared paths once
    # registered, then removed: nothing piles up under models/runs.
    assert (project / "models" / "challenger" / "config.json").exists()
    assert json.loads((project / "data" / "splits" / "data.json").read_text()) == first["data"]
    assert list((project / "models" / "runs").iterdir()) == []
    # The export step ran before the alias moved: the champion has its serving formats.
    assert v1.tags["format.export"] == "ok" and v1.tags["format.chosen"]
    assert first["formats"]["chosen"] == v1.tags["format.chosen"]

    # A weaker bar the challenger cannot clear: refused, reason recorded, champion stays.
    second = retrain(
        params_path=params_path, epochs=1, gate_rules={"min_macro_f1_gain": 0.5}, trigger="test"
    )
    assert not second["promoted"] and second["version"] == "2"
    assert "macro-F1 gain" in second["decision"]
    assert alias_version(mc, name, CHAMPION) == "1"
    v2 = mc.get_model_version(name, "2")
    assert v2.tags["gate.decision"] == "refused"
    assert v2.tags["gate.summary"] == second["decision"]
    assert second["formats"] is None and "format.export" not in v2.tags  # refused: no export

    # Forcing it is recorded; rolling back restores version 1.
    from slmops.tasks.core.config import with_overrides
    from slmops.tasks.pipeline.promote import promote_version

    strict = with_overrides(params, {"gate": {"min_macro_f1_gain": 0.5}}, "test")
    _, promoted = promote_version(strict, "2", force=True, action="manual", note="test force")
    assert promoted and alias_version(mc, name, CHAMPION) == "2"
    assert alias_version(mc, name, PREVIOUS) == "1"
    rollback(params, reason="test rollback")
    assert alias_version(mc, name, CHAMPION) == "1"

    entries = ledger.read(project / "mlflow" / "promotions.jsonl")
    assert [(e["action"], e["version"], e["promoted"]) for e in entries[:3]] == [
        ("gate", "1", True),
        ("gate", "2", False),
        ("force-promote", "2", True),
    ]
    assert entries[1]["champion_before"] == "1" and entries[1]["reason"] == second["decision"]
    assert [c["rule"] for c in entries[1]["checks"] if not c["passed"]] == ["min_macro_f1_gain"]
    assert entries[2]["formats"]["chosen"] == mc.get_model_version(name, "2").tags["format.chosen"]
    assert entries[-1]["action"] == "rollback" and entries[-1]["champion_after"] == "1"


def task_runs(flow_run_id, expected: int, timeout: float = 60.0) -> list:
    """The flow run's finished task runs, by start time, once the API holds ``expected``
    (Prefect records task run states from events, a moment after the flow returns)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            done = [r for r in runs if r.start_time and r.end_time]
            if len(done) >= expected or time.monotonic() > deadline:
                return sorted(done, key=lambda r: r.start_time)


def test_export_is_a_task_run_of_its_own_and_a_failed_export_keeps_the_promotion(
    project, monkeypatch, caplog
):
    from slmops.flows.retrain import retrain
    from slmops.tasks.core.config import load_params
    from slmops.tasks.model.export import CHOSEN_TAG, EXPORT_STATUS_TAG
    from slmops.tasks.registry import ledger
    from slmops.tasks.registry.promotion import CHAMPION, alias_version, client

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr("slmops.tasks.model.export.export_onnx", broken)

    params_path = str(project / "params.yaml")
    params = load_params(params_path)
    name = params.registry.model_name
    state = retrain(params_path=params_path, epochs=1, trigger="test", return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["promoted"] and "exporter exploded" in result["formats"]["error"]

    # The steps the Prefect UI shows, in order: export between the gate and the alias move.
    # (then the run is recorded in DVC: tests/flows/test_retrain_dvc.py)
    names = [r.name.rsplit("-", 1)[0] for r in task_runs(state.state_details.flow_run_id, 14)]
    assert names[-4:] == ["promotion-gate", "export", "promote", "record-in-dvc"], names
    # The failed export left the promotion in place, and says so everywhere.
    mc = client(params)
    assert alias_version(mc, name, CHAMPION) == "1"
    tags = mc.get_model_version(name, "1").tags
    assert tags[EXPORT_STATUS_TAG] == "failed" and "exporter exploded" in tags["format.error"]
    assert CHOSEN_TAG not in tags
    entry = ledger.read(params.path(params.registry.ledger))[-1]
    assert entry["promoted"] and entry["champion_after"] == "1"
    assert "exporter exploded" in entry["formats"]["error"]
    assert "served in torch fp32" in caplog.text
