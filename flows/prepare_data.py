"""Prefect flow: import pending label exports, run the validation gate, split.

The retrain flow starts with this one. Each step is a plain function from
``tasks/`` wrapped as a Prefect task; nothing here re-implements a step. A
failing step names itself in the run's state message (``flows/steps.py``).
"""

from __future__ import annotations

from prefect import get_run_logger

from slmops.flows.steps import load_params_step, pipeline_flow, step
from slmops.tasks.core.errors import DataError
from slmops.tasks.pipeline.prepare import import_pending, run_gate, write_splits

import_pending_task = step(import_pending, name="import-pending-labels")
split_task = step(write_splits, name="split")


@step(name="validate-data")
def validate_task(params):
    """Validate labeled data and test split; fail the flow at error severity."""
    logger = get_run_logger()
    results = run_gate(params)
    failed = []
    for result, out_dir in results:
        for line in result.problems():
            logger.warning("%s: %s", result.dataset, line)
        logger.info(
            "%s: %s (%d rows; report %s)",
            result.dataset,
            "passed" if result.passed else "FAILED",
            result.rows,
            out_dir / "report.json",
        )
        if not result.passed:
            failed.append(f"{result.dataset}: " + "; ".join(result.problems()))
    if failed:
        raise DataError("validation gate failed:\n" + "\n".join(failed))
    return [str(out_dir / "report.json") for _, out_dir in results]


@pipeline_flow(name="prepare-data", log_prints=True)
def prepare_data(params_path: str = "params.yaml") -> dict:
    """Import pending labels → validation gate → train/val split."""
    logger = get_run_logger()
    params = load_params_step(params_path)
    imports = import_pending_task(params)
    for s in imports:
        logger.info(
            "imported %s: %d added, %d corrected, %d unchanged, %d quarantined (version %s)",
            s.source,
            s.added,
            s.corrected,
            s.unchanged,
            s.quarantined,
            s.version,
        )
    reports = validate_task(params)
    split = split_task(params)
    logger.info("split: %d train / %d val rows", split.train_rows, split.val_rows)
    return {
        "imported": [s.source for s in imports],
        "reports": reports,
        "train_rows": split.train_rows,
        "val_rows": split.val_rows,
    }
