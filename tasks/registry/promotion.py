"""Promotion: challenger against champion through the gate, aliases, ledger, rollback.

The ``champion`` alias is what serves; ``previous`` is the champion before it.
Every decision (promotion, refusal, manual promotion, rollback) is appended to
the ledger, because MLflow keeps no history of alias moves.

A promotion is two steps: :func:`gate` judges the version and tags the decision
on it; :func:`promote` moves the aliases (when the gate passed, or it was forced)
and writes the ledger entry. The promoted version's serving formats are exported
between the two (:mod:`slmops.tasks.pipeline.promote`, and the ``retrain`` flow's
``export`` step), so the service never loads a champion whose formats are still
being made; a failed export does not stop :func:`promote`. :func:`apply` is the
two steps without an export.

The alias and the ledger live in two stores and cannot change together: a
promotion moves the aliases and only then writes the ledger. A process killed
between the alias move and the ledger write leaves a champion the ledger does
not name; the next promotion or rollback (:func:`reconcile`) finds the
disagreement and records the champion it finds, with the gate decision tagged
on that version, before doing anything else.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from slmops.tasks.core.config import GateRules, Params
from slmops.tasks.core.errors import PromotionError
from slmops.tasks.core.lock import project_lock
from slmops.tasks.model.evaluate import PREDICTIONS_FILE, REPORT_FILE
from slmops.tasks.registry import ledger, model_card
from slmops.tasks.registry.gate import GateDecision, decide
from slmops.tasks.registry.model_card import TAG_DECISION, TAG_REASONS, TAG_SUMMARY
from slmops.tasks.registry.registration import (
    TAG_TEST_HASH,
    registration_state,
    require_complete,
)
from slmops.tasks.registry.store import Registry
from slmops.tasks.registry.tracking import actor

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"
EVAL_ARTIFACTS = "eval"  # run artifact folder holding the evaluation files


@dataclass(frozen=True)
class Evaluated:
    """A registered model version with its evaluation on the frozen test split."""

    version: str
    report: dict[str, Any]
    predictions: pd.DataFrame
    test_hash: str
    run_id: str


@dataclass(frozen=True)
class Verdict:
    """The gate's judgement of a version (tagged on it), before any alias moves."""

    version: str
    champion_before: str | None  # the champion it was judged against
    decision: GateDecision
    forced: bool
    metrics: dict[str, dict[str, Any] | None]  # "challenger", "champion": their test metrics

    @property
    def promoted(self) -> bool:
        """Whether :func:`promote` makes it the champion (the gate passed, or forced)."""
        return self.decision.promote or self.forced


def client(params: Params) -> Any:
    """The raw MLflow client on the configured store, for inspection (tests, ad hoc
    queries); the project's code goes through :class:`~slmops.tasks.registry.store.Registry`."""
    return Registry.configured(params).client


def alias_version(registry: Registry | Any, name: str, alias: str) -> str | None:
    """The version an alias points to, or None. ``registry``: a
    :class:`~slmops.tasks.registry.store.Registry` or the client :func:`client` returns."""
    if not isinstance(registry, Registry):
        registry = Registry(registry.tracking_uri, registry)
    return registry.alias(name, alias)


def load_evaluated(registry: Registry, name: str, version: str) -> Evaluated:
    """Fetch a version's test-split evaluation from its run's artifacts."""
    mv = registry.version(name, version)
    if mv is None:
        raise PromotionError(f"{name} has no version {version!r} (`slmops models` lists them)")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = registry.download_run_artifacts(mv.run_id, EVAL_ARTIFACTS, Path(tmp))
            report = json.loads((folder / REPORT_FILE).read_text())
            predictions = pd.read_csv(folder / PREDICTIONS_FILE, dtype={"label": str, "pred": str})
        except (OSError, ValueError) as exc:
            raise PromotionError(
                f"{name} version {version}: no evaluation found in run {mv.run_id} ({exc})"
            ) from None
    return Evaluated(str(version), report, predictions, mv.tags.get(TAG_TEST_HASH, ""), mv.run_id)


def reconcile(
    params: Params, registry: Registry | None = None, *, who: str | None = None
) -> dict[str, Any] | None:
    """Make the ledger agree with the ``champion`` alias after a crash between the two.

    When the ledger's last ``champion_after`` is not the version the alias points
    to (a promotion or rollback killed after its alias move, before its ledger
    entry), append a ``reconcile`` entry recording the alias as found, with the
    version's gate tags, and point ``previous`` at the champion the ledger named.
    Returns the entry, or None when they agree.
    """
    registry = registry or Registry.configured(params)
    name = params.registry.model_name
    path = params.path(params.registry.ledger)
    entries = [e for e in ledger.read(path) if e.get("model") == name]
    recorded = entries[-1].get("champion_after") if entries else None
    recorded = str(recorded) if recorded is not None else None
    found = registry.alias(name, CHAMPION)
    if found == recorded:
        return None
    mv = registry.version(name, found) if found else None
    tags = mv.tags if mv else {}
    if found and recorded and registry.alias(name, PREVIOUS) != recorded:
        registry.set_alias(name, PREVIOUS, recorded)  # what the move would have set
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


def judge(challenger: Evaluated, champion: Evaluated | None, rules: GateRules) -> GateDecision:
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


def gate(params: Params, version: str, *, force: bool = False, who: str | None = None) -> Verdict:
    """Judge ``version`` against the current champion and tag the decision on it and on
    its run (``gate.decision``: promoted, forced or refused; ``gate.summary``;
    ``gate.reasons``: the failed rules), and write its model card again. Moves nothing.

    ``force`` promotes even when the gate refuses (recorded as such). A version whose
    registration never completed is completed first when its files are intact, and
    refused otherwise (:func:`~slmops.tasks.registry.registration.require_complete`).
    """
    registry = Registry.configured(params)
    name = params.registry.model_name
    reconcile(params, registry, who=who)
    current = registry.alias(name, CHAMPION)
    if current == str(version):
        raise PromotionError(f"{name} version {version} is already the champion")
    mv = registry.version(name, version)
    if mv is not None:  # (a missing version: load_evaluated says so)
        # A registration killed midway: completed here when its files are intact,
        # else a clear refusal.
        require_complete(registry, mv, who=who or actor())
    challenger = load_evaluated(registry, name, version)
    champion = load_evaluated(registry, name, current) if current else None
    decision = judge(challenger, champion, params.gate)
    tag = "promoted" if decision.promote else ("forced" if force else "refused")
    tags = {
        TAG_DECISION: tag,
        TAG_SUMMARY: decision.summary[:4000],
        TAG_REASONS: model_card.gate_reasons(decision.reasons),
    }
    registry.set_tags(name, version, tags)
    if challenger.run_id:  # the same tags on the run: runs are filtered and sorted on them too
        registry.set_run_tags(challenger.run_id, tags)
    model_card.refresh(registry, name, str(version))
    return Verdict(
        str(version),
        current,
        decision,
        force,
        {"challenger": _metrics(challenger), "champion": _metrics(champion)},
    )


def promote(
    params: Params,
    verdict: Verdict,
    *,
    action: str = "gate",
    who: str | None = None,
    note: str = "",
    formats: dict[str, Any] | None = None,
) -> bool:
    """Act on :func:`gate`'s ``verdict``: when it promotes, point ``previous`` at the
    champion it was judged against and ``champion`` at the version; then write the
    ledger entry (with ``formats``, the export's outcome, when given). Returns whether
    the champion moved.

    Under the project lock (:func:`~slmops.tasks.core.lock.project_lock`). When the
    champion is no longer the one the verdict judged against (another run promoted
    in between), the version is judged again against the new champion first: the
    last writer never wins without having been compared, and a refusal is never
    recorded against a champion that is no longer serving (the ledger stays one chain).
    """
    with project_lock(params, f"promote version {verdict.version}"):
        registry = Registry.configured(params)
        name = params.registry.model_name
        now = registry.alias(name, CHAMPION)
        if now not in (verdict.champion_before, verdict.version):
            log.warning(
                "%s version %s was judged against version %s, but the champion is now "
                "version %s: judging it again",
                name,
                verdict.version,
                verdict.champion_before,
                now,
            )
            verdict = gate(params, verdict.version, force=verdict.forced, who=who)
        return _move_aliases(
            params, registry, verdict, action=action, who=who, note=note, formats=formats
        )


def _move_aliases(
    params: Params,
    registry: Registry,
    verdict: Verdict,
    *,
    action: str,
    who: str | None,
    note: str,
    formats: dict[str, Any] | None,
) -> bool:
    name = params.registry.model_name
    version, current = verdict.version, verdict.champion_before
    if verdict.promoted:
        if current:
            registry.set_alias(name, PREVIOUS, current)
        registry.set_alias(name, CHAMPION, version)
    ledger.append(
        params.path(params.registry.ledger),
        {
            "action": "force-promote" if verdict.forced else action,
            "model": name,
            "version": version,
            "champion_before": current,
            "champion_after": version if verdict.promoted else current,
            "promoted": verdict.promoted,
            "actor": who or actor(),
            "reason": verdict.decision.summary + (f" ({note})" if note else ""),
            "checks": verdict.decision.checks,
            "metrics": verdict.metrics,
            **({"formats": formats} if formats is not None else {}),
        },
    )
    log.info("%s version %s: %s", name, version, verdict.decision.summary)
    if verdict.promoted:  # its serving formats are exported by now: the card says which
        model_card.refresh(registry, name, version)
    if verdict.promoted:
        write_champion_metrics(params, version, verdict.metrics["challenger"] or {})
    return verdict.promoted


def write_champion_metrics(params: Params, version: str, metrics: dict[str, Any]) -> Path:
    """Write the champion's test metrics to ``registry.champion_metrics`` (a top-level
    metrics file of dvc.yaml: what ``dvc metrics show`` shows as the champion's, while
    ``reports/eval/metrics.json`` is the last challenger's). Called whenever the
    champion alias moves, after the ledger entry; a failure to write is a warning."""
    path = params.path(params.registry.champion_metrics)
    record = {"model": params.registry.model_name, "version": str(version), **metrics}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=f".{path.name}.", delete=False, encoding="utf-8"
        ) as fh:
            json.dump(record, fh, indent=2)
            fh.write("\n")
        Path(fh.name).replace(path)  # whole or not at all
    except OSError as exc:  # the alias has moved: a report file never undoes that
        log.warning("%s not written: %s", path, exc)
    return path


def apply(
    params: Params,
    version: str,
    *,
    force: bool = False,
    action: str = "gate",
    who: str | None = None,
    note: str = "",
) -> tuple[GateDecision, bool]:
    """:func:`gate` then :func:`promote`, with no export between them (promoting with
    the export: :func:`slmops.tasks.pipeline.promote.promote_version`).

    Returns the decision and whether the champion moved. Every call is written to
    the ledger.
    """
    verdict = gate(params, version, force=force, who=who)
    return verdict.decision, promote(params, verdict, action=action, who=who, note=note)


def rollback(params: Params, *, who: str | None = None, reason: str = "") -> dict[str, Any]:
    """Move ``champion`` back to ``previous`` (and ``previous`` to the demoted version),
    under the project lock."""
    with project_lock(params, "rollback"):
        return _rollback(params, who=who, reason=reason)


def _rollback(params: Params, *, who: str | None, reason: str) -> dict[str, Any]:
    registry = Registry.configured(params)
    name = params.registry.model_name
    reconcile(params, registry, who=who)
    current = registry.alias(name, CHAMPION)
    previous = registry.alias(name, PREVIOUS)
    if current is None or previous is None:
        raise PromotionError(
            f"{name}: nothing to roll back to (champion: {current}, previous: {previous})"
        )
    registry.set_alias(name, CHAMPION, previous)
    registry.set_alias(name, PREVIOUS, current)
    entry = ledger.append(
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
    try:
        metrics = _metrics(load_evaluated(registry, name, previous)) or {}
    except PromotionError as exc:  # a version without its evaluation: still rolled back
        log.warning("champion metrics of version %s not found: %s", previous, exc)
        metrics = {}
    write_champion_metrics(params, previous, metrics)
    return entry


def versions_table(params: Params) -> pd.DataFrame:
    """One row per registered version: metrics, data versions, gate outcome, aliases, and
    registration state (``pending`` for one never completed, ``failed``)."""
    registry = Registry.configured(params)
    name = params.registry.model_name
    by_alias = registry.aliases(name)
    if by_alias is None:
        return pd.DataFrame()
    aliases: dict[str, list[str]] = {}
    for alias, version in by_alias.items():
        aliases.setdefault(version, []).append(alias)
    rows = []
    for mv in registry.versions(name):
        t = mv.tags
        rows.append(
            {
                "version": int(mv.version),
                "aliases": ",".join(sorted(aliases.get(mv.version, []))),
                "accuracy": _float(t.get("metrics.accuracy")),
                "macro_f1": _float(t.get("metrics.macro_f1")),
                "labeled_data": t.get("data.labeled_hash", "")[:12],
                "test_data": t.get(TAG_TEST_HASH, "")[:12],
                "gate": t.get(TAG_DECISION, ""),
                "registration": registration_state(mv),
                "created": pd.Timestamp(mv.created_ms, unit="ms").strftime("%Y-%m-%d %H:%M"),
                "run_id": mv.run_id,
            }
        )
    return pd.DataFrame(rows).sort_values("version", ascending=False).reset_index(drop=True)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
