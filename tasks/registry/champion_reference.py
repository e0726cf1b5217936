"""What monitoring needs from the registry: the champion's version and its test-set predictions.

Monitoring compares live predictions with the ones the served version made on
the frozen test split when it was evaluated; registration logs them in the
version's run as ``eval/predictions.csv``. This module is monitoring's only way
to MLflow, so that the registry package stays the one place that talks to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slmops.tasks.core.config import Params
from slmops.tasks.core.redact import redact_text
from slmops.tasks.model.evaluate import PREDICTIONS_FILE
from slmops.tasks.registry.promotion import CHAMPION, EVAL_ARTIFACTS, alias_version, client

# Where register_challenger logs the evaluation's predictions in the version's run.
REFERENCE_ARTIFACT = f"{EVAL_ARTIFACTS}/{PREDICTIONS_FILE}"


class ReferenceUnavailable(Exception):
    """The version's reference predictions cannot be fetched; the message says why
    (the first line of MLflow's error, passwords masked)."""


@dataclass(frozen=True)
class ReferenceArtifact:
    """A local copy of a version's test-set predictions and where it came from."""

    model_name: str
    version: str
    run_id: str
    path: Path

    @property
    def source(self) -> str:
        """Where the predictions were read, as the monitoring report names it."""
        return f"models:/{self.model_name}/{self.version} (run {self.run_id}, {REFERENCE_ARTIFACT})"


def champion_version(params: Params) -> str | None:
    """The version the ``champion`` alias of ``registry.model_name`` points to, or None."""
    return alias_version(client(params), params.registry.model_name, CHAMPION)


def download_reference(params: Params, version: str, dst: Path) -> ReferenceArtifact:
    """Download ``version``'s :data:`REFERENCE_ARTIFACT` into the folder ``dst``.

    Raises :class:`ReferenceUnavailable` when the version, its run or the file is
    missing or the store cannot be read.
    """
    # mlflow is heavy and only the registry imports it: deferred to the call.
    import mlflow
    from mlflow.exceptions import MlflowException

    name = params.registry.model_name
    try:
        mv = client(params).get_model_version(name, version)
        path = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=str(dst)
        )
    except (MlflowException, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # The message may quote a tracking URI: never a password in a report.
        raise ReferenceUnavailable(redact_text(first[:200])) from None
    return ReferenceArtifact(name, str(version), str(mv.run_id), Path(path))
