"""Each registered version's description: a short model card in markdown.

The card is written from the version's tags alone (data versions, test metrics, the
weakest classes, the gate's decision and reasons, the serving format, the git
commit), so it can be written again whenever they change: at registration, once
the gate has decided, and once the version is promoted (its serving formats
exported by then). The MLflow UI shows it on the version's page.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from slmops.tasks.registry.store import ModelVersion, Registry

log = logging.getLogger(__name__)

# The gate's tags, on the version and on its run: filter and sort on them in the UI
# (e.g. ``tags.`gate.decision` = 'promoted'``).
TAG_DECISION = "gate.decision"  # pending, promoted, forced or refused
TAG_SUMMARY = "gate.summary"  # the gate's one-line summary
TAG_REASONS = "gate.reasons"  # the failed rules, short ("none" when it passed)
TAG_WEAKEST = "eval.weakest_classes"  # the classes with the lowest test F1

WEAKEST = 3  # how many weak classes the card names
REASONS_CHARS = 500  # a tag a person reads in a table column, not the whole report

_METRICS = (("metrics.accuracy", "accuracy"), ("metrics.macro_f1", "macro-F1"))
_METRICS_NER = (("metrics.f1", "entity F1"),)


def weakest_classes(per_class: Mapping[str, Mapping[str, Any]], n: int = WEAKEST) -> str:
    """``label (F1 0.412, n=12); …``: the ``n`` classes with the lowest test F1 among
    those in the test split (an evaluation report's ``per_class``)."""
    scored = [
        (float(row["f1"]), label, int(row.get("support") or 0))
        for label, row in per_class.items()
        if row.get("f1") is not None and int(row.get("support") or 0) > 0
    ]
    scored.sort()
    return "; ".join(f"{label} (F1 {f1:.3f}, n={support})" for f1, label, support in scored[:n])


def gate_reasons(reasons: list[str]) -> str:
    """The value of ``gate.reasons``: the failed rules, or ``none``."""
    text = "; ".join(reasons) or "none"
    return text if len(text) <= REASONS_CHARS else text[: REASONS_CHARS - 1] + "…"


def _serving(tags: Mapping[str, str]) -> str:
    if tags.get("format.export") == "failed":
        return f"export failed ({tags.get('format.error', '?')[:200]}): served in torch fp32"
    if tags.get("format.chosen"):
        sizes = [
            f"{key.split('.')[1]} {value} MB"
            for key, value in sorted(tags.items())
            if key.startswith("format.") and key.endswith(".size_mb")
        ]
        return f"`{tags['format.chosen']}`" + (f" ({', '.join(sizes)})" if sizes else "")
    return "not exported yet (formats are exported when a version is promoted)"


def render(mv: ModelVersion) -> str:
    """The model card of ``mv``, in markdown, from its tags."""
    t = mv.tags
    task = t.get("task", "?")
    rows = [
        f"| {label} | {t[key]} |"
        for key, label in (*_METRICS, *_METRICS_NER)
        if t.get(key) not in (None, "")
    ]
    decision = t.get(TAG_DECISION, "pending")
    if decision == "pending":
        gate = "not judged yet"
    else:
        gate = f"**{decision}**: {t.get(TAG_SUMMARY, '')}"
        if t.get(TAG_REASONS, "none") != "none":
            gate += f" (failed: {t[TAG_REASONS]})"
    lines = [
        f"### {mv.name} version {mv.version} ({task})",
        "",
        "| test metric | value |",
        "|---|---|",
        *rows,
        "",
        f"- **Data** (DVC hashes): labeled `{t.get('data.labeled_hash', '?')}`, "
        f"test `{t.get('data.test_hash', '?')}`",
        f"- **Weakest classes** (test F1): {t.get(TAG_WEAKEST) or 'n/a'}",
        f"- **Gate**: {gate}",
        f"- **Serving format**: {_serving(t)}",
        f"- **Code**: git commit `{t.get('git.commit', '?')}`",
    ]
    if t.get("live.accuracy"):
        lines.append(
            f"- **Live accuracy**: {t['live.accuracy']} on {t.get('live.feedback_rows', '?')} "
            "reviewed predictions"
        )
    return "\n".join(lines) + "\n"


def refresh(registry: Registry, name: str, version: str) -> None:
    """Write version ``version``'s card again from its tags now. A failure is a warning:
    the card is a convenience, never a reason for a registration or promotion to fail."""
    try:
        mv = registry.version(name, version)
        if mv is not None:
            registry.set_description(name, version, render(mv))
    except Exception as exc:  # MLflow's client raises many types; the card can wait
        log.warning("%s version %s: model card not updated (%s)", name, version, exc)
