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

    # Forcing it is recorded; rolling back restores version 1.
    from slmops.tasks.core.config import with_overrides
    from slmops.tasks.registry.promotion import apply

    strict = with_overrides(params, {"gate": {"min_macro_f1_gain": 0.5}}, "test")
    _, promoted = apply(strict, "2", force=True, action="manual", note="test force")
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
    assert entries[-1]["action"] == "rollback" and entries[-1]["champion_after"] == "1"
