"""Promotion against a real (embedded) MLflow registry, with crafted evaluations."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slmops.tasks.core.config import parse_params
from slmops.tasks.model.metrics import classification_report
from slmops.tasks.registry import ledger
from slmops.tasks.registry.promotion import (
    CHAMPION,
    PREVIOUS,
    PromotionError,
    alias_version,
    apply,
    client,
    gate,
    promote,
    rollback,
    versions_table,
)

LABELS = ["a", "b", "c"]


@pytest.fixture
def params(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = {"gate": {"min_accuracy": 0.6, "min_macro_f1": 0.5, "alpha": 0.05}}
    return parse_params(raw, tmp_path / "params.yaml", root=tmp_path)


def write_eval(tmp_path: Path, correct: np.ndarray) -> tuple[Path, dict]:
    """An evaluation folder (report.json, predictions.csv) with the given correctness, in a
    new folder under ``tmp_path``; returns it and the report."""
    y = np.array([LABELS[i % 3] for i in range(len(correct))])
    pred = np.where(correct, y, np.roll(y, 1))
    probs = np.full((len(y), 3), 0.1)
    probs[np.arange(len(y)), [LABELS.index(p) for p in pred]] = 0.8
    report = classification_report(list(y), probs, LABELS)
    report["metrics"] = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
    folder = tmp_path / f"eval-{len(list(tmp_path.glob('eval-*')))}"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(report))
    pd.DataFrame({"text": [f"t{i}" for i in range(len(y))], "label": y, "pred": pred}).to_csv(
        folder / "predictions.csv", index=False
    )
    return folder, report


def add_version(params, correct: np.ndarray, tmp_path: Path, test_hash: str = "t1") -> str:
    """Register a version whose run holds an evaluation with the given correctness."""
    import mlflow

    folder, report = write_eval(tmp_path, correct)
    mc = client(params)
    name = params.registry.model_name
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), artifact_path="eval")
    if not mc.search_registered_models(f"name='{name}'"):
        mc.create_registered_model(name)
    mv = mc.create_model_version(
        name,
        source=f"runs:/{run.info.run_id}/eval",
        run_id=run.info.run_id,
        tags={
            "data.test_hash": test_hash,
            "metrics.accuracy": str(report["accuracy"]),
            "metrics.macro_f1": str(report["macro_f1"]),
        },
    )
    return str(mv.version)


def correctness(n: int, wrong: int, seed: int = 0) -> np.ndarray:
    c = np.ones(n, dtype=bool)
    c[np.random.default_rng(seed).choice(n, wrong, replace=False)] = False
    return c


def test_first_model_is_promoted_when_it_passes_the_floors(params, tmp_path):
    v1 = add_version(params, correctness(300, 60), tmp_path)
    decision, promoted = apply(params, v1)
    assert promoted and decision.promote
    assert alias_version(client(params), params.registry.model_name, CHAMPION) == v1
    entry = ledger.read(params.path(params.registry.ledger))[-1]
    assert entry["version"] == v1 and entry["promoted"] and entry["champion_before"] is None


def test_weaker_challenger_is_refused_and_the_champion_stays(params, tmp_path):
    v1 = add_version(params, correctness(300, 30), tmp_path)
    apply(params, v1)
    v2 = add_version(params, correctness(300, 100, seed=1), tmp_path)
    decision, promoted = apply(params, v2)
    assert not promoted
    assert decision.reasons
    name = params.registry.model_name
    assert alias_version(client(params), name, CHAMPION) == v1
    assert client(params).get_model_version(name, v2).tags["gate.decision"] == "refused"
    entries = ledger.read(params.path(params.registry.ledger))
    assert [e["promoted"] for e in entries] == [True, False]
    assert entries[-1]["metrics"]["champion"]["accuracy"] == pytest.approx(0.9)


def test_clearly_better_challenger_is_promoted_and_previous_kept(params, tmp_path):
    v1 = add_version(params, correctness(300, 90), tmp_path)
    apply(params, v1)
    better = correctness(300, 90)
    better[~better] = np.arange((~better).sum()) % 3 != 0  # fixes 2 of every 3 errors
    v2 = add_version(params, better, tmp_path)
    decision, promoted = apply(params, v2)
    assert promoted, decision.reasons
    mc = client(params)
    name = params.registry.model_name
    assert alias_version(mc, name, CHAMPION) == v2
    assert alias_version(mc, name, PREVIOUS) == v1


def test_force_promotes_a_refused_version_and_rollback_undoes_it(params, tmp_path):
    v1 = add_version(params, correctness(300, 30), tmp_path)
    apply(params, v1)
    v2 = add_version(params, correctness(300, 100, seed=1), tmp_path)
    _, promoted = apply(params, v2, force=True, action="manual")
    assert promoted
    entry = rollback(params, reason="bad release")
    mc = client(params)
    name = params.registry.model_name
    assert alias_version(mc, name, CHAMPION) == v1
    assert (entry["champion_before"], entry["champion_after"]) == (v2, v1)
    actions = [e["action"] for e in ledger.read(params.path(params.registry.ledger))]
    assert actions == ["gate", "force-promote", "rollback"]
    table = versions_table(params)
    assert table.set_index("version").loc[int(v1), "aliases"] == CHAMPION


def test_models_on_different_test_splits_are_not_compared(params, tmp_path):
    v1 = add_version(params, correctness(300, 30), tmp_path, test_hash="t1")
    apply(params, v1)
    v2 = add_version(params, correctness(300, 10), tmp_path, test_hash="t2")
    with pytest.raises(PromotionError, match="same frozen test rows"):
        apply(params, v2)


def test_rollback_without_previous_is_a_clear_error(params, tmp_path):
    apply(params, add_version(params, correctness(300, 30), tmp_path))
    with pytest.raises(PromotionError, match="nothing to roll back to"):
        rollback(params)


def test_the_gate_only_judges_and_tags_then_promote_moves_the_aliases(params, tmp_path):
    v1 = add_version(params, correctness(300, 30), tmp_path)
    apply(params, v1)
    v2 = add_version(params, correctness(300, 30, seed=2), tmp_path)
    mc = client(params)
    name = params.registry.model_name
    path = params.path(params.registry.ledger)

    verdict = gate(params, v2, force=True, who="tester")
    assert verdict.version == v2 and verdict.champion_before == v1 and verdict.promoted
    assert verdict.metrics["champion"]["accuracy"] == pytest.approx(0.9)
    assert mc.get_model_version(name, v2).tags["gate.decision"] in ("promoted", "forced")
    assert alias_version(mc, name, CHAMPION) == v1  # nothing moved yet
    assert len(ledger.read(path)) == 1

    formats = {"chosen": "onnx", "error": None}
    assert promote(params, verdict, action="manual", who="tester", formats=formats)
    assert (alias_version(mc, name, CHAMPION), alias_version(mc, name, PREVIOUS)) == (v2, v1)
    entry = ledger.read(path)[-1]
    assert entry["action"] == "force-promote" and entry["actor"] == "tester"
    assert entry["formats"] == formats and entry["champion_before"] == v1


def test_two_challengers_gated_at_once_do_not_both_win(params, tmp_path):
    """Two runs gate their challengers against champion v1 at the same time; the first
    promotes. The second is judged again against the new champion before its alias
    move: it is compared with the other challenger, never silently replaces it."""
    v1 = add_version(params, correctness(300, 90), tmp_path)
    apply(params, v1)
    better = correctness(300, 90)
    better[~better] = np.arange((~better).sum()) % 3 != 0  # fixes 2 of every 3 errors
    v2 = add_version(params, better, tmp_path)
    v3 = add_version(params, better, tmp_path)  # as good as v2, no better
    first, second = gate(params, v2), gate(params, v3)
    assert first.promoted and second.promoted  # each beats v1
    assert promote(params, first)
    assert not promote(params, second)  # judged again against v2: not better
    mc = client(params)
    name = params.registry.model_name
    assert (alias_version(mc, name, CHAMPION), alias_version(mc, name, PREVIOUS)) == (v2, v1)
    entries = ledger.read(params.path(params.registry.ledger))
    assert [(e["version"], e["champion_before"], e["promoted"]) for e in entries[-2:]] == [
        (v2, v1, True),
        (v3, v2, False),
    ]


def test_a_refusal_judged_against_a_champion_since_replaced_is_judged_again(params, tmp_path):
    """Refused against v1, but v1 was replaced (a forced v2, weaker) before the refusal
    was recorded: judged again against v2, which it beats. (Was: a refusal recorded as
    ``champion_before: v1, champion_after: v1`` while v2 served, a break in the ledger.)"""
    good = correctness(300, 90)
    v1 = add_version(params, good, tmp_path)
    apply(params, v1)
    weaker = good.copy()
    weaker[np.flatnonzero(good)[:30]] = False  # v1 with 30 more errors
    v2 = add_version(params, weaker, tmp_path)
    v3 = add_version(params, good, tmp_path)  # as good as v1, no better
    verdict = gate(params, v3)
    assert not verdict.promoted and verdict.champion_before == v1
    apply(params, v2, force=True)  # meanwhile
    assert promote(params, verdict)  # judged again against v2
    entries = ledger.read(params.path(params.registry.ledger))
    chain = [(e["champion_before"], e["champion_after"]) for e in entries]
    assert chain == [(None, v1), (v1, v2), (v2, v3)]  # each entry starts where the last ended
