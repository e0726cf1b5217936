"""Promotion: challenger against champion through the gate, aliases, ledger, rollback.

The ``champion`` alias is what serves; ``previous`` is the champion before it.
Every decision (promotion, refusal, manual promotion, rollback) is appended to
the ledger, because MLflow keeps no history of alias moves.

The alias and the ledger live in two stores and cannot change together: a
promotion tags the version, exports its formats, moves the aliases and only then
writes the ledger. A process killed between the alias move and the ledger write
leaves a champion the ledger does not name; the next promotion or rollback
(:func:`reconcile`) finds the disagreement and records the champion it finds,
with the gate decision tagged on that version, before doing anything else.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from slmops.tasks.core.config import GateConfig, Params
from slmops.tasks.core.errors import PromotionError
from slmops.tasks.model.evaluate import PREDICTIONS_FILE, REPORT_FILE
from slmops.tasks.registry import ledger
from slmops.tasks.registry.gate import GateDecision, decide
from slmops.tasks.registry.tracking import actor, configure

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"
EVAL_ARTIFACTS = "eval"  # run artifact folder holding the evaluation files
TAG_TEST_HASH = "data.test_hash"
TAG_DECISION = "gate.decision"
TAG_SUMMARY = "gate.summary"


@dataclass(frozen=True)
class Evaluated:
    """A registered model version with its evaluation on the frozen test split."""

    version: str
    report: dict[str, Any]
    predictions: pd.DataFrame
    test_hash: str
    run_id: str


def client(params: Params):
    """An MLflow client on the configured store."""
    from mlflow import MlflowClient

    configure(params)
    return MlflowClient()


def alias_version(mlflow_client, name: str, alias: str) -> str | None:
    """The version an alias points to, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow_client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def load_evaluated(mlflow_client, name: str, version: str) -> Evaluated:
    """Fetch a version's test-split evaluation from its run's artifacts."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mv = mlflow_client.get_model_version(name, version)
    except MlflowException:
        raise PromotionError(
            f"{name} has no version {version!r} (`slmops models` lists them)"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = Path(
                mlflow.artifacts.download_artifacts(
                    run_id=mv.run_id, artifact_path=EVAL_ARTIFACTS, dst_path=tmp
                )
            )
            report = json.loads((folder / REPORT_FILE).read_text())
            predictions = pd.read_csv(folder / PREDICTIONS_FILE, dtype={"label": str, "pred": str})
        except (OSError, ValueError) as exc:
            raise PromotionError(
                f"{name} version {version}: no evaluation found in run {mv.run_id} ({exc})"
            ) from None
    return Evaluated(str(version), report, predictions, mv.tags.get(TAG_TEST_HASH, ""), mv.run_id)


def reconcile(params: Params, mc=None, *, who: str | None = None) -> dict[str, Any] | None:
    """Make the ledger agree with the ``champion`` alias after a crash between the two.

    When the ledger's last ``champion_after`` is not the version the alias points
    to (a promotion or rollback killed after its alias move, before its ledger
    entry), append a ``reconcile`` entry recording the alias as found, with the
    version's gate tags, and point ``previous`` at the champion the ledger named.
    Returns the entry, or None when they agree.
    """
    mc = mc or client(params)
    name = params.registry.model_name
    path = params.path(params.registry.ledger)
    entries = [e for e in ledger.read(path) if e.get("model") == name]
    recorded = entries[-1].get("champion_after") if entries else None
    recorded = str(recorded) if recorded is not None else None
    found = alias_version(mc, name, CHAMPION)
    if found == recorded:
        return None
    tags = mc.get_model_version(name, found).tags if found else {}
    if found and recorded and alias_version(mc, name, PREVIOUS) != recorded:
        mc.set_registered_model_alias(name, PREVIOUS, recorded)  # what the move would have set
    log.warning(
        "%s: the champion alias is at version %s but the ledger's last entry says %s "
        "(a promotion or rollback was interrupted before its ledger entry); recording it",
        name,
        found,
        recorded,
    )
    return ledger.append(
        path,
        {
            "action": "reconcile",
            "model": name,
            "version": found,
            "champion_before": recorded,
            "champion_after": found,
            "promoted": found is not None,
            "actor": who or actor(),
            "reason": f"champion alias found at version {found} while the ledger named "
            f"{recorded}: an interrupted promotion or rollback, recorded afterwards "
            f"(gate: {tags.get(TAG_DECISION, 'none')})",
            "gate": {"decision": tags.get(TAG_DECISION), "summary": tags.get(TAG_SUMMARY)},
        },
    )


def judge(challenger: Evaluated, champion: Evaluated | None, rules: GateConfig) -> GateDecision:
    """Apply the gate to two evaluations made on the same test rows."""
    if champion is not None:
        if champion.test_hash != challenger.test_hash:
            raise PromotionError(
                f"version {challenger.version} was evaluated on test split {challenger.test_hash} "
                f"but the champion (version {champion.version}) on {champion.test_hash}: "
                "the gate compares models on the same frozen test rows only"
            )
        if not challenger.predictions["text"].equals(champion.predictions["text"]):
            raise PromotionError("challenger and champion predictions are not on the same rows")
    return decide(
        challenger.report,
        champion.report if champion else None,
        rules,
        y_true=challenger.predictions["label"].to_numpy(),
        challenger_pred=challenger.predictions["pred"].to_numpy(),
        champion_pred=champion.predictions["pred"].to_numpy() if champion else None,
        labels=list(challenger.report["per_class"]),
    )


def _metrics(e: Evaluated | None) -> dict[str, Any] | None:
    return dict(e.report.get("metrics", {})) if e else None


def apply(
    params: Params,
    version: str,
    *,
    force: bool = False,
    action: str = "gate",
    who: str | None = None,
    note: str = "",
) -> tuple[GateDecision, bool]:
    """Gate ``version`` against the current champion; move the aliases if it passes.

    ``force`` promotes even when the gate refuses (recorded as such). A promoted
    version's serving formats are exported first (:func:`tasks.model.export.export_on_promotion`;
    the ledger entry says which format was chosen, or why the export failed).
    Returns the decision and whether the champion moved. Every call is written to
    the ledger.
    """
    mc = client(params)
    name = params.registry.model_name
    reconcile(params, mc, who=who)
    current = alias_version(mc, name, CHAMPION)
    if current == str(version):
        raise PromotionError(f"{name} version {version} is already the champion")
    challenger = load_evaluated(mc, name, version)
    champion = load_evaluated(mc, name, current) if current else None
    decision = judge(challenger, champion, params.gate)
    promoted = decision.promote or force
    tag = "promoted" if decision.promote else ("forced" if force else "refused")
    mc.set_model_version_tag(name, version, TAG_DECISION, tag)
    mc.set_model_version_tag(name, version, TAG_SUMMARY, decision.summary[:4000])
    formats = None
    if promoted:
        from slmops.tasks.model.export import export_on_promotion

        # Before the alias moves, so the service never loads a champion whose formats are
        # still being made. A failed export is logged and tagged, never raised: the
        # promotion stands and the version is served in torch fp32.
        formats = export_on_promotion(params, mc, str(version))
        if current:
            mc.set_registered_model_alias(name, PREVIOUS, current)
        mc.set_registered_model_alias(name, CHAMPION, version)
    ledger.append(
        params.path(params.registry.ledger),
        {
            "action": action if not force else "force-promote",
            "model": name,
            "version": str(version),
            "champion_before": current,
            "champion_after": str(version) if promoted else current,
            "promoted": promoted,
            "actor": who or actor(),
            "reason": decision.summary + (f" ({note})" if note else ""),
            "checks": decision.checks,
            "metrics": {"challenger": _metrics(challenger), "champion": _metrics(champion)},
            **({"formats": formats} if formats is not None else {}),
        },
    )
    log.info("%s version %s: %s", name, version, decision.summary)
    return decision, promoted


def rollback(params: Params, *, who: str | None = None, reason: str = "") -> dict[str, Any]:
    """Move ``champion`` back to ``previous`` (and ``previous`` to the demoted version)."""
    mc = client(params)
    name = params.registry.model_name
    reconcile(params, mc, who=who)
    current = alias_version(mc, name, CHAMPION)
    previous = alias_version(mc, name, PREVIOUS)
    if current is None or previous is None:
        raise PromotionError(
            f"{name}: nothing to roll back to (champion: {current}, previous: {previous})"
        )
    mc.set_registered_model_alias(name, CHAMPION, previous)
    mc.set_registered_model_alias(name, PREVIOUS, current)
    return ledger.append(
        params.path(params.registry.ledger),
        {
            "action": "rollback",
            "model": name,
            "version": previous,
            "champion_before": current,
            "champion_after": previous,
            "promoted": True,
            "actor": who or actor(),
            "reason": reason or f"rollback from version {current} to {previous}",
        },
    )


def versions_table(params: Params) -> pd.DataFrame:
    """One row per registered version: metrics, data versions, gate outcome, aliases."""
    mc = client(params)
    name = params.registry.model_name
    from mlflow.exceptions import MlflowException

    try:
        model = mc.get_registered_model(name)
    except MlflowException:
        return pd.DataFrame()
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in mc.search_model_versions(f"name='{name}'"):
        t = mv.tags
        rows.append(
            {
                "version": int(mv.version),
                "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
                "accuracy": _float(t.get("metrics.accuracy")),
                "macro_f1": _float(t.get("metrics.macro_f1")),
                "labeled_data": t.get("data.labeled_hash", "")[:12],
                "test_data": t.get(TAG_TEST_HASH, "")[:12],
                "gate": t.get(TAG_DECISION, ""),
                "created": pd.Timestamp(mv.creation_timestamp, unit="ms").strftime(
                    "%Y-%m-%d %H:%M"
                ),
                "run_id": mv.run_id,
            }
        )
    return pd.DataFrame(rows).sort_values("version", ascending=False).reset_index(drop=True)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
