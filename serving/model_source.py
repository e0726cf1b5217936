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

:class:`slmops.tasks.model.inference.Predictor` expects weights and tokenizer in one
folder, so the tokenizer files are copied beside the weights before the
rename. Weights are read from safetensors only: a version without them is
refused rather than unpickled.

**Serving formats.** The version's run holds the formats exported at promotion
(:mod:`slmops.tasks.model.export`): ``formats/formats.json`` and ``formats/<format>/model.onnx``.
The service serves ``serve.format`` (``auto``: the format chosen at export).
Only the manifest and the served format's file are downloaded, into
``<version>/formats/`` beside the model. A version without that format (never
exported, export failed, file missing or unloadable) is served in torch fp32
with a warning in the log, in ``/health`` and in ``/model``; it is not an error,
because torch fp32 is the reference every format was checked against.
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

from slmops.tasks.core.config import Params, ServeFormat
from slmops.tasks.core.redact import redact_text
from slmops.tasks.model.export import (
    FORMATS_DIR,
    FORMATS_FILE,
    ModelFilesError,
    arrange_model_folder,
    model_folder,
)
from slmops.tasks.model.inference import ONNX_FORMATS, BasePredictor, load_predictor
from slmops.tasks.registry.promotion import CHAMPION
from slmops.tasks.registry.store import Registry, RegistryError
from slmops.tasks.task_types import TaskType, task_of_model

log = logging.getLogger(__name__)

MARKER = "slmops-serving.json"  # written last: its presence means the folder is complete
STALE_TMP_SECONDS = 3600  # temporary folders older than this are leftovers of a crash
WARMUP_TEXT = "warm-up"
FALLBACK_FORMAT = ServeFormat.torch.value


class ModelSourceError(RuntimeError):
    """A model version cannot be resolved, downloaded or loaded (the message says why).

    The message often quotes MLflow's error, which can hold the tracking URI: any
    password in a URI is masked, since it reaches the log, ``/health`` and ``/model``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(redact_text(message))


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
    predictor: BasePredictor
    source: str
    path: Path
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    requested_format: str | None = None  # serve.format when loaded (None: not applicable)
    format_warning: str | None = None  # why the served format is not the requested one

    @property
    def labels(self) -> list[str]:
        """The model's labels, in output order."""
        return list(self.predictor.labels)

    @property
    def task(self) -> TaskType:
        """The task type the model was loaded as (read from its folder's config)."""
        return self.predictor.task

    @property
    def label_set(self) -> list[str]:
        """What feedback may name: the labels, or a token classifier's entity types."""
        return self.task.label_set_of(self.labels)

    @property
    def format(self) -> str:
        """The format being served (``torch``, ``onnx-int8``, ...)."""
        return getattr(self.predictor, "format", FALLBACK_FORMAT)


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
    try:
        return model_folder(root)
    except ModelFilesError as exc:
        raise ModelSourceError(str(exc)) from None


def _arrange(root: Path) -> Path:
    """Make the downloaded folder loadable by a predictor; return the model folder."""
    try:
        return arrange_model_folder(root)
    except ModelFilesError as exc:
        raise ModelSourceError(str(exc)) from None


def _clean_stale_temporaries(parent: Path) -> None:
    now = time.time()
    for tmp in parent.glob(".*.partial"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass  # another process removed it first


def registry_reader(params: Params) -> Registry:
    """The configured registry, without touching MLflow's global state.

    The service never calls :func:`slmops.tasks.registry.store.configure`: that would set
    the process-wide tracking URI and create the experiment, neither of which a
    reader should do.
    """
    return Registry.of(params)


def fetch_version(params: Params, ref: ModelRef, registry: Registry | None = None) -> Path:
    """Download ``ref`` into the cache unless already there; return its model folder.

    A cached folder is reused only if its marker names the same run: a
    registry rebuilt from scratch reuses version numbers for other models.
    ``registry`` defaults to :func:`registry_reader`.
    """
    final = params.path(params.serve.model_cache_dir) / ref.name / ref.version
    marker = _read_marker(final)
    if marker and marker.get("run_id") == ref.run_id:
        return _model_folder(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temporaries(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ref.version}-", suffix=".partial", dir=final.parent))
    try:
        registry = registry or registry_reader(params)
        try:
            # The folder comes back under its own name inside `tmp` (".../artifacts").
            local = registry.download_version(ref.name, ref.version, tmp)
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


def _download_run_artifact(params: Params, run_id: str, path: str, dest: Path) -> Path:
    """Download ``path`` of run ``run_id`` to ``dest`` atomically (a hidden temporary
    folder beside it, renamed into place); return ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", suffix=".partial", dir=dest.parent))
    try:
        local = registry_reader(params).download_run_artifacts(run_id, path, tmp)
        os.replace(local, dest)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_format(params: Params, ref: ModelRef, folder: Path, fmt: str) -> dict:
    """The files of format ``fmt`` (``auto``: the one chosen at export) of ``ref``.

    ``folder`` is the version's model folder (:func:`fetch_version`); formats go
    to ``formats/`` beside it. Returns ``{"format", "onnx_path", "warning"}``:
    the format to serve (torch fp32 when ``fmt`` is unavailable, the reason in
    ``warning``) and its ONNX file (None for the torch formats, which need no
    file). The manifest is fetched on every load (it is small, and an export
    may have been redone since); an ONNX file already in the cache is reused.
    """
    fmt = ServeFormat(fmt).value
    if fmt != ServeFormat.auto and fmt not in ONNX_FORMATS:
        return {"format": fmt, "onnx_path": None, "warning": None}
    root = folder.parent / FORMATS_DIR
    manifest_path = root / FORMATS_FILE
    problem = ""
    try:
        _download_run_artifact(params, ref.run_id, f"{FORMATS_DIR}/{FORMATS_FILE}", manifest_path)
    except Exception as exc:  # no such artifact, or the store failed: a cached copy may do
        problem = f" ({type(exc).__name__}: {exc})"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return _fallback(ref, fmt, f"no serving formats were exported for it{problem}")
    if fmt == ServeFormat.auto:
        fmt = str(manifest.get("chosen") or FALLBACK_FORMAT)
        if fmt not in ONNX_FORMATS:
            return {"format": fmt, "onnx_path": None, "warning": None}
    relative = ((manifest.get("formats") or {}).get(fmt) or {}).get("file")
    if not relative:
        return _fallback(ref, fmt, f"format {fmt} was not exported for it")
    target = (root / relative).resolve()
    # The manifest is read from the registry: a path that leaves formats/ (``..``, an
    # absolute path) would read, or download over, a file outside the cache.
    if not target.is_relative_to(root.resolve()):
        return _fallback(ref, fmt, f"format {fmt}: file {relative!r} is outside {FORMATS_DIR}/")
    if not target.is_file():
        try:
            _download_run_artifact(params, ref.run_id, f"{FORMATS_DIR}/{relative}", target)
        except Exception as exc:  # a missing or unreadable file is a fallback, not an outage
            return _fallback(ref, fmt, f"format {fmt} could not be downloaded ({exc})")
    return {"format": fmt, "onnx_path": target, "warning": None}


def _fallback(ref: ModelRef, fmt: str, why: str) -> dict:
    warning = f"{ref.uri}: {why}; serving torch fp32 instead of {fmt}"
    log.warning(warning)
    return {"format": FALLBACK_FORMAT, "onnx_path": None, "warning": warning}


def serve_threads(params: Params) -> int | None:
    """Inference threads: ``serve.num_threads``, else ``train.num_threads``, else all cores."""
    return params.serve.num_threads or params.train.num_threads


def build_predictor(params: Params, folder: Path, chosen: dict) -> tuple[BasePredictor, str | None]:
    """The predictor for ``chosen`` (see :func:`fetch_format`) and the warning to show.

    A format that fails to load (a corrupt ONNX file, say) falls back to torch
    fp32 with a warning, like a missing one; torch fp32 failing is an error.
    """
    train = params.train
    fmt, warning = chosen["format"], chosen["warning"]
    # The folder's config says what the model was fine-tuned for.
    kwargs = {"device": train.device, "precision": train.precision, "task": task_of_model(folder)}
    if fmt != FALLBACK_FORMAT:
        try:
            predictor = load_predictor(
                fmt, folder, chosen["onnx_path"], num_threads=serve_threads(params), **kwargs
            )
            return predictor, warning
        except Exception as exc:  # onnxruntime, torch and I/O raise many types
            warning = f"{folder}: format {fmt} failed to load ({exc}); serving torch fp32"
            log.warning(warning)
    predictor = load_predictor(FALLBACK_FORMAT, folder, num_threads=serve_threads(params), **kwargs)
    return predictor, warning


class RegistrySource:
    """The champion of ``registry.model_name`` in the configured MLflow registry."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.name = params.registry.model_name
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        """The configured registry (see :func:`registry_reader`)."""
        if self._registry is None:
            self._registry = registry_reader(self.params)
        return self._registry

    def champion(self) -> ModelRef:
        """The version ``champion`` points to; :class:`NoChampion` when there is none."""
        try:
            mv = self.registry.version_by_alias(self.name, CHAMPION)
        except RegistryError as exc:
            raise ModelSourceError(f"registry unreachable or failing: {exc}") from exc
        if mv is None:
            raise NoChampion(
                f"{self.name} has no {CHAMPION!r} version yet: register and promote one "
                "(`slmops retrain`, or `slmops promote --version N`)"
            )
        return ModelRef(self.name, mv.version, mv.run_id)

    def load(self, ref: ModelRef) -> LoadedModel:
        """Download (or reuse) ``ref`` and its served format, build the predictor and run
        one warm-up prediction."""
        folder = fetch_version(self.params, ref, self.registry)
        requested = self.params.serve.format.value
        chosen = fetch_format(self.params, ref, folder, requested)
        try:
            predictor, warning = build_predictor(self.params, folder, chosen)
            # A broken model should fail here, before it replaces a working one,
            # and the first real request should not pay for lazy initialisation.
            (answer,) = predictor.task.score(predictor, [WARMUP_TEXT], chunk=1, top_k=1)
        except Exception as exc:  # torch, safetensors and transformers raise many types
            raise ModelSourceError(f"{ref.uri}: cannot load model from {folder}: {exc}") from exc
        if not 0.0 <= answer.confidence <= 1.0:  # NaN fails too
            raise ModelSourceError(f"{ref.uri}: warm-up prediction is not a probability")
        log.info("serving %s as %s (serve.format: %s)", ref.uri, predictor.format, requested)
        return LoadedModel(
            ref.name,
            ref.version,
            ref.run_id,
            predictor,
            ref.uri,
            folder,
            requested_format=requested,
            format_warning=warning,
        )


def load_champion(params: Params) -> LoadedModel:
    """Resolve ``models:/<name>@champion``, download it if needed and load it."""
    source = RegistrySource(params)
    return source.load(source.champion())
