"""The one door to MLflow's store: where it is, and typed reads and writes of registered
versions, aliases, tags and run artifacts.

Nothing outside ``slmops.tasks.registry`` imports MLflow: tracking and promotion
use this module, and serving, monitoring and export go through :class:`Registry`
(or through tracking and promotion). Callers get plain values
(:class:`ModelVersion`, strings, paths), never MLflow objects.

The store is embedded by default (``sqlite:///mlflow/mlflow.db`` with artifacts
in ``mlflow/artifacts``); ``MLFLOW_TRACKING_URI`` points everything at a
server instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmops.tasks.core.config import Params

# A registry answers "no such model/version/alias" with one of these codes.
_ABSENT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class RegistryError(RuntimeError):
    """The store is unreachable or failing (the message is MLflow's)."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model, as the registry holds it."""

    name: str
    version: str
    run_id: str  # "" when the version was registered without a run
    tags: dict[str, str] = field(default_factory=dict)
    created_ms: int = 0  # creation time, milliseconds since the epoch
    # MLflow's status: READY, or PENDING_REGISTRATION / FAILED_REGISTRATION for a
    # version whose files a store is still copying, or failed to.
    status: str = "READY"
    description: str = ""  # markdown: the model card (:mod:`slmops.tasks.registry.model_card`)

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``: pinned, unlike an alias."""
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class RunRecord:
    """One tracking run, as the store holds it."""

    run_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED or SCHEDULED
    tags: dict[str, str] = field(default_factory=dict)
    start_ms: int = 0  # start time, milliseconds since the epoch
    model_ids: tuple[str, ...] = ()  # the logged models the run output


def tracking_uri(params: Params) -> str:
    """The tracking URI: ``MLFLOW_TRACKING_URI`` if set, else the configured one.

    A relative ``sqlite:///`` path is resolved against the project root.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.registry.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        db = params.path(uri[len(prefix) :])
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = prefix + str(db.resolve())
    return uri


def configure(params: Params) -> str:
    """Point MLflow's process-wide state at the store and make sure the experiment exists;
    return its id. Writers (runs, registration, promotion) call it; readers need not."""
    import mlflow  # deferred: importing mlflow takes seconds

    _quiet_downloads()
    from_env = bool(os.environ.get("MLFLOW_TRACKING_URI"))
    mlflow.set_tracking_uri(tracking_uri(params))
    if not from_env:
        # MLflow exports the URI it is given to the environment; undo that so a
        # later project in this process (or a child process) reads its own
        # params instead of inheriting this store.
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    name = params.registry.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        mlflow.set_experiment(experiment_id=experiment.experiment_id)
        return experiment.experiment_id
    location = None
    if not from_env:
        location = params.path(params.registry.artifact_location).resolve().as_uri()
    experiment_id = mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _mlflow_error() -> type[Exception]:
    """MLflow's exception class (what its client raises for a missing entity)."""
    from mlflow.exceptions import MlflowException  # deferred: importing mlflow takes seconds

    return MlflowException


def _quiet_downloads() -> None:
    # Artifact downloads are a few small files; their progress bars only clutter the logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _version(mv: Any) -> ModelVersion:
    return ModelVersion(
        name=str(mv.name),
        version=str(mv.version),
        run_id=mv.run_id or "",
        tags=dict(mv.tags or {}),
        created_ms=int(mv.creation_timestamp or 0),
        status=str(mv.status or "READY"),
        description=str(mv.description or ""),
    )


def _run(run: Any) -> RunRecord:
    outputs = run.outputs.model_outputs if run.outputs else []
    return RunRecord(
        run_id=str(run.info.run_id),
        status=str(run.info.status),
        tags=dict(run.data.tags or {}),
        start_ms=int(run.info.start_time or 0),
        model_ids=tuple(str(o.model_id) for o in outputs or []),
    )


class Registry:
    """The model registry and the runs behind it, on one store.

    Built on an explicit URI, it leaves MLflow's process-wide state alone (the
    service reads through it without ever calling :func:`configure`).
    """

    def __init__(self, uri: str, client: Any = None) -> None:
        """``client``: an MLflow client already on that store (default: a new one)."""
        if client is None:
            from mlflow import MlflowClient  # deferred: importing mlflow takes seconds

            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.uri = uri
        self.client = client  # the raw MLflow client, for this package and for inspection

    @classmethod
    def of(cls, params: Params) -> Registry:
        """The registry the params name, without touching MLflow's global state."""
        return cls(tracking_uri(params))

    @classmethod
    def configured(cls, params: Params) -> Registry:
        """The registry the params name, after :func:`configure` (for writers, which
        also log runs through MLflow's process-wide state)."""
        configure(params)
        return cls.of(params)

    # ------------------------------------------------------------------ reads

    def version(self, name: str, version: str) -> ModelVersion | None:
        """Version ``version`` of ``name``; None when there is none (or the store fails)."""
        try:
            return _version(self.client.get_model_version(name, str(version)))
        except _mlflow_error():
            return None

    def version_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version ``alias`` points to; None when the model or the alias does not
        exist. Raises :class:`RegistryError` when the store fails."""
        try:
            return _version(self.client.get_model_version_by_alias(name, alias))
        except _mlflow_error() as exc:
            if getattr(exc, "error_code", None) in _ABSENT:
                return None
            raise RegistryError(getattr(exc, "message", str(exc))) from exc

    def alias(self, name: str, alias: str) -> str | None:
        """The version number ``alias`` points to, or None (also when the store fails)."""
        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except _mlflow_error():
            return None

    def aliases(self, name: str) -> dict[str, str] | None:
        """``{alias: version}`` of ``name``; None when the model is not registered."""
        try:
            model = self.client.get_registered_model(name)
        except _mlflow_error():
            return None
        return {alias: str(version) for alias, version in (model.aliases or {}).items()}

    def versions(self, name: str) -> list[ModelVersion]:
        """Every registered version of ``name``."""
        return [_version(mv) for mv in self.client.search_model_versions(f"name='{name}'")]

    def run(self, run_id: str) -> RunRecord | None:
        """Run ``run_id``; None when there is none."""
        try:
            return _run(self.client.get_run(run_id))
        except _mlflow_error():
            return None

    def runs(self, experiment: str, status: str) -> list[RunRecord]:
        """The runs of experiment ``experiment`` (a name) in ``status`` (e.g. RUNNING)."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        out: list[RunRecord] = []
        token = None
        while True:
            page = self.client.search_runs(
                [found.experiment_id],
                filter_string=f"attributes.status = '{status}'",
                page_token=token,
            )
            out += [_run(r) for r in page]
            token = page.token
            if not token:
                return out

    def run_files(self, run_id: str, path: str) -> set[str]:
        """The artifact paths directly under ``path`` of run ``run_id`` (empty when none)."""
        try:
            return {f.path for f in self.client.list_artifacts(run_id, path)}
        except (_mlflow_error(), OSError):
            return set()

    def version_files(self, name: str, version: str) -> set[str]:
        """Every file of a registered version's model, as paths relative to its folder
        (empty when the files cannot be listed)."""
        from mlflow.store.artifact.artifact_repository_registry import (  # deferred: slow import
            get_artifact_repository,
        )

        files: set[str] = set()
        try:
            repo = get_artifact_repository(
                self.version_download_uri(name, version), tracking_uri=self.uri
            )
            folders: list[str | None] = [None]
            while folders:
                for f in repo.list_artifacts(folders.pop()):
                    (folders.append(f.path) if f.is_dir else files.add(f.path))
        except (_mlflow_error(), OSError):
            return set()
        return files

    def logged_model_status(self, model_id: str) -> str | None:
        """A logged model's status (PENDING, READY, FAILED); None when there is none."""
        try:
            return str(self.client.get_logged_model(model_id).status)
        except _mlflow_error():
            return None

    # ------------------------------------------------------------------ writes

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point ``alias`` of ``name`` at ``version``."""
        self.client.set_registered_model_alias(name, alias, str(version))

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``alias`` from ``name``."""
        self.client.delete_registered_model_alias(name, alias)

    def set_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """Set tags on a version, one by one in the given order."""
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, value)

    def delete_version(self, name: str, version: str) -> None:
        """Remove version ``version`` of ``name`` from the registry (its run stays)."""
        self.client.delete_model_version(name, str(version))

    def end_run(self, run_id: str, status: str) -> None:
        """End a run with ``status`` (FINISHED, FAILED or KILLED), now."""
        self.client.set_terminated(run_id, status)

    def set_run_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Tag a run, one tag at a time."""
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def fail_logged_model(self, model_id: str) -> None:
        """Mark a logged model whose upload never finished as FAILED."""
        self.client.finalize_logged_model(model_id, "FAILED")

    def log_metric(self, run_id: str, key: str, value: float) -> None:
        """Add a value to a run's metric history."""
        self.client.log_metric(run_id, key, float(value))

    def log_metrics(self, run_id: str, values: Mapping[str, float], step: int = 0) -> None:
        """Add values to a run's metric histories, at ``step``, in one call."""
        from mlflow.entities import Metric  # deferred: importing mlflow takes seconds

        now = _now_ms()
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(run_id, metrics=metrics)

    def create_run(self, experiment_id: str, name: str, tags: Mapping[str, str]) -> str:
        """Open a run (RUNNING) without making it the process's active run; return its id."""
        return str(
            self.client.create_run(experiment_id, tags=dict(tags), run_name=name).info.run_id
        )

    def set_description(self, name: str, version: str, text: str) -> None:
        """Set a version's description (markdown, shown on its page in the MLflow UI)."""
        self.client.update_model_version(name, str(version), description=text)

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str) -> None:
        """Upload the files of ``folder`` to ``artifact_path`` of a finished run."""
        self.client.log_artifacts(run_id, str(folder), artifact_path=artifact_path)

    # ------------------------------------------------------------------ downloads

    def version_download_uri(self, name: str, version: str) -> str:
        """Where a registered version's model files are.

        MLflow's ``models:/`` artifact repository looks the version up through the
        process-wide registry URI, ignoring the one it is given (and would read,
        and create, ./mlflow.db instead), so the URI is resolved here.
        """
        uri = self.client.get_model_version_download_uri(name, str(version))
        if uri.startswith("models:/"):  # a logged model's id (MLflow 3 sources)
            logged = self.client.get_logged_model(uri.removeprefix("models:/").strip("/"))
            uri = logged.artifact_location
        return uri

    def download_version(self, name: str, version: str, dst: Path) -> Path:
        """Download a version's model files into ``dst``; return the folder they are in
        (MLflow keeps their own folder name inside ``dst``)."""
        import mlflow  # deferred: importing mlflow takes seconds

        _quiet_downloads()
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=self.version_download_uri(name, version),
                dst_path=str(dst),
                tracking_uri=self.uri,
            )
        )

    def download_run_artifacts(self, run_id: str, path: str, dst: Path) -> Path:
        """Download ``path`` (a file or folder) of run ``run_id`` into ``dst``; return the
        local copy."""
        import mlflow  # deferred: importing mlflow takes seconds

        _quiet_downloads()
        return Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=str(dst), tracking_uri=self.uri
            )
        )
