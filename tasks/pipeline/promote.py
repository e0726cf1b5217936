"""Promotion with its export: gate a version, export its serving formats, move the champion.

The export runs after the gate has decided and before the ``champion`` alias
moves, so the service never loads a champion whose formats are still being
made. It is a step of its own (the ``retrain`` flow shows it as the ``export``
task run); a failed export never undoes or blocks the promotion the gate
granted: the version becomes champion all the same and is served in torch fp32.
The CLI's ``slmops promote`` and the flow both go through these functions.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from slmops.tasks.core.config import Params
from slmops.tasks.core.errors import DataError
from slmops.tasks.core.task_type import TaskType
from slmops.tasks.data.dataset import LabeledPaths, read_test
from slmops.tasks.data.versioning import data_hash
from slmops.tasks.model.export import (
    CHOSEN_TAG,
    EXPORT_STATUS_TAG,
    FORMATS_DIR,
    FORMATS_FILE,
    ModelFilesError,
    arrange_model_folder,
    check_formats,
    export_threads,
)
from slmops.tasks.registry.gate import GateDecision
from slmops.tasks.registry.promotion import TAG_TEST_HASH, gate, promote
from slmops.tasks.registry.store import ModelVersion, Registry
from slmops.tasks.task_types import task_type

log = logging.getLogger(__name__)


def _reference_accuracy(params: Params, mv: ModelVersion, key: str) -> float | None:
    """The version's own torch fp32 test score (tag ``key``: ``metrics.accuracy``, or
    ``metrics.f1`` for a token classifier), if measured on the workspace's test split."""
    try:
        workspace = data_hash(LabeledPaths(params).test_dir)
    except DataError:
        return None
    if mv.tags.get(TAG_TEST_HASH) != workspace or key not in mv.tags:
        return None
    try:
        return float(mv.tags[key])
    except ValueError:
        return None


def export_version(params: Params, version: str, task: TaskType) -> dict[str, Any]:
    """Export the formats of registered ``version`` (a model of task type ``task``), store
    them on its run and tag it.

    Downloads the version's model, runs :func:`~slmops.tasks.model.export.check_formats`
    on the frozen test split, logs ``formats/`` to the version's run and sets the
    ``format.*`` tags. Raises on any failure (see :func:`export_formats`).
    """
    registry = Registry.configured(params)
    name = params.registry.model_name
    mv = registry.version(name, version)
    if mv is None:
        raise ModelFilesError(f"{name} has no version {version!r} to export")
    if not mv.run_id:
        raise ModelFilesError(f"{name} version {version} has no run to store its formats on")
    test = read_test(params)
    with tempfile.TemporaryDirectory(prefix="slmops-formats-") as tmp:
        local = registry.download_version(name, version, Path(tmp) / "download")
        folder = arrange_model_folder(local)
        out = Path(tmp) / FORMATS_DIR
        # Formats are compared by the task's figure (entity F1 for NER), its own tag included.
        report = check_formats(
            folder,
            out,
            test,
            params.export,
            task=task,
            fp32_accuracy=_reference_accuracy(params, mv, f"metrics.{task.eval_metric}"),
            num_threads=export_threads(params),
        )
        report["model"] = {"name": name, "version": str(version), "run_id": mv.run_id}
        (out / FORMATS_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        registry.log_artifacts(mv.run_id, out, FORMATS_DIR)
    tags = {EXPORT_STATUS_TAG: "ok", CHOSEN_TAG: report["chosen"]}
    for fmt, check in report["formats"].items():
        if check["accuracy"] is not None:
            tags[f"format.{fmt}.accuracy"] = f"{check['accuracy']:.4f}"
        if check["size_bytes"] is not None:
            tags[f"format.{fmt}.size_mb"] = f"{check['size_bytes'] / 1e6:.1f}"
    registry.set_tags(name, version, tags)
    return report


def export_formats(params: Params, version: str) -> dict[str, Any]:
    """:func:`export_version` for the project's task type, never raising: the export step.

    A failed export must not lose a promotion the gate granted: the version
    becomes champion all the same and is served in torch fp32 (the service
    logs the missing format and shows it in ``/health`` and ``/model``). The
    failure is logged as a warning and tagged on the version
    (``format.export: failed``, ``format.error``). Returns ``{"chosen", "error"}``
    (and ``seconds``, or ``skipped`` when ``export.enabled`` is false): what the
    ledger entry records as ``formats``.
    """
    name = params.registry.model_name
    if not params.export.enabled:
        return {"chosen": None, "error": None, "skipped": "export.enabled is false"}
    try:
        report = export_version(params, version, task_type(params))
    except Exception as exc:  # torch, onnx, onnxruntime, MLflow and I/O raise many types
        error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "%s version %s: serving formats not exported (%s); it is promoted all the same "
            "and will be served in torch fp32",
            name,
            version,
            error,
        )
        try:
            Registry.of(params).set_tags(
                name, version, {EXPORT_STATUS_TAG: "failed", "format.error": error[:4000]}
            )
        except Exception as tag_exc:  # the registry itself may be what failed
            log.warning("could not tag the failed export: %s", tag_exc)
        return {"chosen": None, "error": error}
    return {"chosen": report["chosen"], "error": None, "seconds": report["seconds"]}


def promote_version(
    params: Params,
    version: str,
    *,
    force: bool = False,
    action: str = "gate",
    who: str | None = None,
    note: str = "",
) -> tuple[GateDecision, bool]:
    """Gate ``version`` against the champion; when it passes (or ``force``), export its
    serving formats, then make it the champion. What ``slmops promote`` runs.

    Returns the decision and whether the champion moved; the ledger entry says
    which format was chosen, or why the export failed.
    """
    verdict = gate(params, version, force=force, who=who)
    formats = export_formats(params, verdict.version) if verdict.promoted else None
    promoted = promote(params, verdict, action=action, who=who, note=note, formats=formats)
    return verdict.decision, promoted
