"""Where the service's model comes from: the registry's ``champion``, cached on disk.

A registered version is downloaded once into
``serve.model_cache_dir/<name>/<version>``. The download goes to a hidden
temporary folder beside it and is renamed into place only when complete, so a
crash or a full disk never leaves a half-written version that a later start
would trust.

The transformers flavour of MLflow stores a version like this::

    MLmodel                      flavors.transformers.model_binary: model
    model/config.json            the classifier (id2label holds the labels)
    model/model.safetensors
    components/tokenizer/        tokenizer.json, tokenizer_config.json, ...

:class:`tasks.inference.Predictor` expects weights and tokenizer in one
folder, so the tokenizer files are copied beside the weights before the
rename. Weights are read from safetensors only: a version without them is
refused rather than unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

from tasks.config import Params
from tasks.inference import Predictor
from tasks.promotion import CHAMPION
from tasks.tracking import tracking_uri

log = logging.getLogger(__name__)

MARKER = "slmops-serving.json"  # written last: its presence means the folder is complete
STALE_TMP_SECONDS = 3600  # temporary folders older than this are leftovers of a crash
WARMUP_TEXT = "warm-up"


class ModelSourceError(RuntimeError):
    """A model version cannot be resolved, downloaded or loaded (the message says why)."""


class NoChampion(ModelSourceError):
    """The registry has no ``champion`` for the model: nothing to serve yet."""


@dataclass(frozen=True)
class ModelRef:
    """One registered model version."""

    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``: pinned, unlike the alias."""
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class LoadedModel:
    """A model version loaded and ready to predict."""

    name: str
    version: str
    run_id: str
    predictor: Predictor
    source: str
    path: Path
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def labels(self) -> list[str]:
        """The model's labels, in output order."""
        return list(self.predictor.labels)


class ModelSource(Protocol):
    """What the service needs from a model source: what to serve, and loading it."""

    def champion(self) -> ModelRef:
        """The version that should serve now (cheap: called on every poll)."""
        ...

    def load(self, ref: ModelRef) -> LoadedModel:
        """Load ``ref`` completely (slow: downloads and builds the model)."""
        ...


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _model_folder(root: Path) -> Path:
    """The folder holding config.json and the weights, from the MLmodel file."""
    binary = "model"
    mlmodel = root / "MLmodel"
    if mlmodel.is_file():
        meta = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
        flavor = (meta.get("flavors") or {}).get("transformers") or {}
        binary = flavor.get("model_binary") or binary
    folder = root / binary
    if not (folder / "config.json").is_file():
        raise ModelSourceError(
            f"{root}: no {binary}/config.json; not a transformers-flavour model "
            "(register versions with `slmops register`)"
        )
    return folder


def _arrange(root: Path) -> Path:
    """Make the downloaded folder loadable by Predictor; return the model folder."""
    folder = _model_folder(root)
    if not any(folder.glob("*.safetensors")):
        raise ModelSourceError(
            f"{folder}: no safetensors weights; refusing to load pickled weights"
        )
    tokenizer = root / "components" / "tokenizer"
    if tokenizer.is_dir():
        for item in tokenizer.iterdir():
            target = folder / item.name
            # Copies, not links: the cache folder stays valid if moved or copied.
            if item.is_file() and not target.exists():
                shutil.copy2(item, target)
    if not any((folder / n).is_file() for n in ("tokenizer.json", "vocab.txt", "tokenizer.model")):
        raise ModelSourceError(f"{root}: no tokenizer files in {folder} or components/tokenizer")
    return folder


def _clean_stale_temporaries(parent: Path) -> None:
    now = time.time()
    for tmp in parent.glob(".*.partial"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass  # another process removed it first


def registry_client(params: Params):
    """An MLflow client on the configured store, without touching MLflow's global state.

    The service never calls :func:`tasks.tracking.configure`: that would set the
    process-wide tracking URI and create the experiment, neither of which a
    reader should do.
    """
    from mlflow import MlflowClient

    uri = tracking_uri(params)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _download_uri(client, ref: ModelRef) -> str:
    # Resolved here with our own client: MLflow's `models:/` artifact repository
    # looks the version up through the process-wide registry URI, ignoring the
    # one it is given, and would read (and create) ./mlflow.db instead.
    uri = client.get_model_version_download_uri(ref.name, ref.version)
    if uri.startswith("models:/"):  # a logged model's id (MLflow 3 sources)
        uri = client.get_logged_model(uri.removeprefix("models:/").strip("/")).artifact_location
    return uri


def fetch_version(params: Params, ref: ModelRef, client=None) -> Path:
    """Download ``ref`` into the cache unless already there; return its model folder.

    A cached folder is reused only if its marker names the same run: a
    registry rebuilt from scratch reuses version numbers for other models.
    ``client`` is an MLflow client on the registry (default: :func:`registry_client`).
    """
    import mlflow

    final = params.path(params.serve.model_cache_dir) / ref.name / ref.version
    marker = _read_marker(final)
    if marker and marker.get("run_id") == ref.run_id:
        return _model_folder(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temporaries(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ref.version}-", suffix=".partial", dir=final.parent))
    try:
        client = client or registry_client(params)
        # Artifact downloads are a few files; progress bars only clutter the logs.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            # The folder comes back under its own name inside `tmp` (".../artifacts").
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=_download_uri(client, ref),
                    dst_path=str(tmp),
                    tracking_uri=tracking_uri(params),
                )
            )
        except Exception as exc:  # MLflow raises many types (store, I/O, HTTP)
            raise ModelSourceError(f"{ref.uri}: download failed: {exc}") from exc
        _arrange(local)
        (local / MARKER).write_text(
            json.dumps(
                {
                    "name": ref.name,
                    "version": ref.version,
                    "run_id": ref.run_id,
                    "source": ref.uri,
                    "downloaded_at": datetime.now(UTC).isoformat(),
                }
            ),
            encoding="utf-8",
        )
        if final.exists():
            # A stale copy (other run) or a racing process's finished copy: move
            # it aside first so the rename below stays a single atomic step.
            if (_read_marker(final) or {}).get("run_id") == ref.run_id:
                return _model_folder(final)
            trash = final.with_name(f".{ref.version}-stale-{os.getpid()}.partial")
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(local, final)
        except OSError:
            # Another process renamed its complete copy in first; use that one.
            if (_read_marker(final) or {}).get("run_id") != ref.run_id:
                raise
        log.info("downloaded %s to %s", ref.uri, final)
        return _model_folder(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class RegistrySource:
    """The champion of ``registry.model_name`` in the configured MLflow registry."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.name = params.registry.model_name
        self._client = None

    @property
    def client(self):
        """An MLflow client on the configured store (see :func:`registry_client`)."""
        if self._client is None:
            self._client = registry_client(self.params)
        return self._client

    def champion(self) -> ModelRef:
        """The version ``champion`` points to; :class:`NoChampion` when there is none."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(self.name, CHAMPION)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise NoChampion(
                    f"{self.name} has no {CHAMPION!r} version yet: register and promote one "
                    "(`slmops retrain`, or `slmops promote --version N`)"
                ) from None
            raise ModelSourceError(f"registry unreachable or failing: {exc.message}") from exc
        return ModelRef(self.name, str(mv.version), mv.run_id or "")

    def load(self, ref: ModelRef) -> LoadedModel:
        """Download (or reuse) ``ref``, build its Predictor and run one warm-up prediction."""
        folder = fetch_version(self.params, ref, self.client)
        train = self.params.train
        try:
            predictor = Predictor.from_dir(
                folder,
                device=train.device,
                precision=train.precision,
                num_threads=train.num_threads,
            )
            # A broken model should fail here, before it replaces a working one,
            # and the first real request should not pay for lazy initialisation.
            probs = predictor.predict_proba([WARMUP_TEXT])
        except Exception as exc:  # torch, safetensors and transformers raise many types
            raise ModelSourceError(f"{ref.uri}: cannot load model from {folder}: {exc}") from exc
        if probs.shape != (1, len(predictor.labels)) or not np.isfinite(probs).all():
            raise ModelSourceError(f"{ref.uri}: warm-up prediction is not a probability vector")
        return LoadedModel(ref.name, ref.version, ref.run_id, predictor, ref.uri, folder)


def load_champion(params: Params) -> LoadedModel:
    """Resolve ``models:/<name>@champion``, download it if needed and load it."""
    source = RegistrySource(params)
    return source.load(source.champion())
