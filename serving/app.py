"""The prediction service: the champion model over HTTP, and the feedback that comes back.

Endpoints (OpenAPI at ``/docs``):

- ``POST /predict``: labels for one text or a batch; every answer is logged
  to the feedback store and carries its ``prediction_id``.
- ``POST /feedback`` (token): a reviewer's label for a prediction.
- ``GET /review``: the least confident predictions nobody has reviewed.
- ``GET /health``, ``GET /model``: what is served, and whether reloads work.
- ``GET /stats``: what the micro-batcher did (batch sizes, rejections).
- ``GET /metrics``: Prometheus metrics (:mod:`serving.metrics`; not in the OpenAPI schema).
- ``POST /admin/reload`` (token): look at the ``champion`` alias now.

Hot swap: a background thread polls the alias. When it moves, the new
version is downloaded and loaded completely, then one reference is replaced.
A request reads that reference once, so requests already running finish on
the model they started with and none fails during a swap. When loading fails,
the old model keeps serving and ``/health`` says ``degraded`` with the error.

Micro-batching (``serve.batching``, :mod:`serving.batcher`): concurrent
requests share one model call and one feedback-store transaction. A batch
reads the served model once, so it runs entirely on one version, and every
prediction reports the version that computed it.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.types import ASGIApp, Receive, Scope, Send

from slmops.serving.batcher import BatcherClosed, BatchStats, MicroBatcher, QueueFull
from slmops.serving.metrics import RecordRequests, ServiceMetrics
from slmops.serving.model_source import LoadedModel, ModelSource, NoChampion, RegistrySource
from slmops.tasks.core.config import Params
from slmops.tasks.feedback.store import (
    FeedbackStore,
    InvalidLabel,
    NewPrediction,
    PredictionRecord,
    UnknownLabel,
    UnknownPrediction,
)
from slmops.tasks.task_types import TaskType
from slmops.tasks.task_types.token.spans import dumps

log = logging.getLogger(__name__)

# A failed version is retried on polls at most this often (/admin/reload retries
# at once): reloading a broken model every few seconds only burns CPU.
RETRY_FAILED_SECONDS = 300.0
# With polling off, a failed first load is retried after 1, 2, 4 ... 60 s.
INITIAL_RETRY_SECONDS = 1.0
MAX_INITIAL_RETRY_SECONDS = 60.0
# How long shutdown waits for the poller (it may be in the middle of a load).
POLLER_JOIN_SECONDS = 10.0
MAX_REVIEW_ROWS = 1000
# Worst case bytes per character in a JSON string (an escaped surrogate pair is
# 12 bytes for one character) plus room for keys: bodies above this are refused
# before they are read.
JSON_BYTES_PER_CHAR = 12
BODY_OVERHEAD_BYTES = 64 * 1024
# Retry-After (seconds) on a 503 for a full batching queue: it drains in milliseconds.
QUEUE_FULL_RETRY_AFTER = "1"

HealthStatus = Literal["ok", "degraded", "loading"]


def _now() -> datetime:
    return datetime.now(UTC)


# -- request and response models --------------------------------------------------------


class PredictRequest(BaseModel):
    """One text, or a batch of texts, to classify."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "My card still hasn't arrived after two weeks"},
                {"texts": ["I lost my card", "What exchange rate do you use?"]},
            ]
        },
    )

    text: str | None = Field(
        default=None,
        description="One text to classify (send this or `texts`). Must not be blank; at "
        "most `serve.max_text_chars` characters (413 beyond).",
    )
    texts: list[str] | None = Field(
        default=None,
        description="Several texts, answered in the same order (send this or `text`). At "
        "most `serve.max_batch` texts (413 beyond).",
    )

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("send either 'text' (a string) or 'texts' (a list of strings)")
        return self

    def all_texts(self) -> list[str]:
        """The texts of the request as a list."""
        return [self.text] if self.text is not None else list(self.texts or [])


class LabelScore(BaseModel):
    """A label and its probability."""

    label: str = Field(examples=["card_arrival"])
    score: float = Field(ge=0.0, le=1.0, examples=[0.91])


class Entity(BaseModel):
    """An entity found in the text (token-classification models)."""

    start: int = Field(ge=0, description="Offset of its first character in the text.")
    end: int = Field(ge=0, description="Offset just past its last character.")
    label: str = Field(description="The entity type.", examples=["person"])
    score: float = Field(ge=0.0, le=1.0, description="Mean probability of its words' tags.")
    text: str = Field(description="`text[start:end]`.", examples=["Empire State Building"])


class EntitySpan(BaseModel):
    """A corrected entity: character offsets into the predicted text and its type."""

    model_config = ConfigDict(extra="forbid")

    start: int = Field(ge=0)
    end: int = Field(ge=0)
    label: str = Field(min_length=1, max_length=255, examples=["location"])


class Prediction(BaseModel):
    """The answer for one text."""

    prediction_id: str = Field(
        description="Send this back with POST /feedback to correct or confirm the answer.",
        examples=["3f2c9a6d1b7e4f0a8c5d2e1f0a9b8c7d"],
    )
    label: str = Field(
        description="The most probable label; for a token-classification model the "
        'entities as JSON `[[start, end, "type"], ...]`.',
        examples=["card_arrival"],
    )
    confidence: float = Field(
        ge=0.0,
        le=1.0,
        description="Probability of `label`; for a token-classification model the mean "
        "probability of the tags of the text's words.",
        examples=[0.91],
    )
    top_k: list[LabelScore] = Field(
        description="The `serve.top_k` most probable labels, most probable first "
        "(empty for a token-classification model)."
    )
    entities: list[Entity] | None = Field(
        default=None,
        description="Token-classification models: the entities, in text order "
        "(null for a text classifier).",
    )
    model_name: str = Field(examples=["slmops-intent"])
    model_version: str = Field(examples=["3"])


class PredictResponse(BaseModel):
    """Answers in the order of the request's texts (always a list, even for `text`)."""

    predictions: list[Prediction]


class FeedbackRequest(BaseModel):
    """A reviewer's label for an earlier prediction."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prediction_id": "3f2c9a6d1b7e4f0a8c5d2e1f0a9b8c7d",
                    "label": "lost_or_stolen_card",
                    "user": "reviewer-7",
                }
            ]
        },
    )

    prediction_id: str = Field(
        min_length=1, max_length=64, description="The id /predict returned with the answer."
    )
    label: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="The correct label (one of GET /model's); text classifiers.",
    )
    entities: list[EntitySpan] | None = Field(
        default=None,
        max_length=1000,
        description="The correct entities of the predicted text (all of them; `[]`: none); "
        "token-classification models. Types from GET /model's `labels`.",
    )
    user: str | None = Field(
        default=None, max_length=255, description="Who gives the feedback (free text)."
    )

    def label_cell(self) -> str:
        """The label as stored: the label, or the entities as span JSON."""
        if self.entities is None:
            return str(self.label)
        return dumps([(e.start, e.end, e.label) for e in self.entities])


class FeedbackResponse(BaseModel):
    """The stored feedback."""

    feedback_id: int
    prediction_id: str
    label: str
    kind: Literal["correction", "confirmation"] = Field(
        description="`correction` when the label differs from the prediction's."
    )
    user: str | None
    created_at: datetime
    created: bool = Field(
        description="False when identical feedback already existed (HTTP 200, nothing added)."
    )


class ReviewItem(BaseModel):
    """A prediction waiting for a reviewer."""

    prediction_id: str
    text: str
    label: str
    confidence: float
    top_k: list[LabelScore]
    model_name: str
    model_version: str
    created_at: datetime


class ReviewResponse(BaseModel):
    """Unreviewed predictions, least confident first."""

    items: list[ReviewItem]


class HealthResponse(BaseModel):
    """Whether the service answers, with which version, and how the last reload went."""

    status: HealthStatus = Field(
        description="`ok`; `degraded`: the last reload failed (see `last_error`), an older "
        "version keeps serving if one is loaded; `loading`: no model yet."
    )
    model_name: str
    model_version: str | None
    loaded_at: datetime | None = Field(description="When the served version was loaded.")
    last_checked_at: datetime | None = Field(description="When the alias was last looked at.")
    last_error: str | None = Field(description="Why the last reload failed (null when it worked).")
    model_format: str | None = Field(
        default=None, description="The format served: torch, torch-int8, onnx, onnx-int8, ..."
    )
    format_warning: str | None = Field(
        default=None,
        description="Why the served format is not `serve.format` (a version without it is "
        "served in torch fp32); null when it is.",
    )


class ModelResponse(BaseModel):
    """The served model version."""

    name: str
    version: str
    run_id: str
    task: str = Field(description="`sequence_classification` or `token_classification`.")
    labels: list[str] = Field(
        description="What feedback may name: the labels, or a token classifier's entity types."
    )
    loaded_at: datetime
    source: str = Field(description="Registry URI of the version (`models:/<name>/<version>`).")
    format: str = Field(description="The format served: torch, torch-int8, onnx, onnx-int8, ...")
    requested_format: str | None = Field(
        description="`serve.format` (`auto`: the format chosen when the version was exported)."
    )
    format_warning: str | None = Field(
        description="Why the served format is not the requested one (null when it is)."
    )


class ReloadResponse(BaseModel):
    """Outcome of a reload: versions before and after, and the error if it failed."""

    previous_version: str | None
    version: str | None
    changed: bool
    status: HealthStatus
    error: str | None


class ErrorResponse(BaseModel):
    """An error, with a message saying what to do."""

    detail: str


class UnknownLabelResponse(ErrorResponse):
    """Feedback with a label outside the model's label set."""

    valid_labels: list[str]


class BatchingStats(BaseModel):
    """What the micro-batcher did since the service started (zeros when batching is off)."""

    enabled: bool
    max_batch: int = Field(description="Texts per model call (serve.batching.max_batch).")
    max_wait_ms: float
    queue_size: int
    queue_depth: int = Field(description="Requests waiting for the model right now.")
    requests: int = Field(description="Requests answered through a batch.")
    texts: int
    batches: int = Field(description="Model calls.")
    failed_batches: int
    rejected: int = Field(description="Requests refused with 503 because the queue was full.")
    mean_batch_requests: float
    mean_batch_texts: float
    max_batch_requests: int
    max_batch_texts: int
    batch_requests: dict[str, int] = Field(
        description="Batch size in requests -> number of batches of that size."
    )


class StatsResponse(BaseModel):
    """Service counters."""

    batching: BatchingStats


# -- the served model and its reloads ---------------------------------------------------


@dataclass(frozen=True)
class ReloadOutcome:
    """What one look at the alias did."""

    previous_version: str | None
    version: str | None
    changed: bool
    error: str | None


class ModelHolder:
    """The served model, replaced atomically when the champion alias moves.

    ``current`` is read without a lock: assigning one attribute is atomic, and
    each request reads it once. The lock only keeps two reloads (poller and
    /admin/reload) from loading the same version at once.
    """

    def __init__(self, source: ModelSource, name: str) -> None:
        self.source = source
        self.name = name
        self.current: LoadedModel | None = None
        self.last_checked_at: datetime | None = None
        self.last_error: str | None = None
        self._failed: tuple[str, str, float] | None = None  # version, run_id, monotonic time
        self._lock = threading.Lock()
        # Told about every version swapped in (the metrics' model info).
        self.on_load: Callable[[LoadedModel], None] | None = None

    @property
    def status(self) -> HealthStatus:
        """``degraded`` after a failed reload, ``loading`` before the first model, else ``ok``."""
        if self.last_error is not None:
            return "degraded"
        return "ok" if self.current is not None else "loading"

    def check(self, *, force: bool = False) -> ReloadOutcome:
        """Look at the alias; if it moved, load the new version and swap it in.

        Never raises: a failure is recorded in ``last_error`` and the served
        model stays. ``force`` retries a version that failed recently.
        """
        with self._lock:
            old = self.current
            before = old.version if old else None
            self.last_checked_at = _now()
            try:
                ref = self.source.champion()
                if old is not None and (ref.version, ref.run_id) == (old.version, old.run_id):
                    self.last_error = None
                    self._failed = None
                    return ReloadOutcome(before, before, False, None)
                if (
                    not force
                    and self._failed is not None
                    and self._failed[:2] == (ref.version, ref.run_id)
                    and time.monotonic() - self._failed[2] < RETRY_FAILED_SECONDS
                ):
                    return ReloadOutcome(before, before, False, self.last_error)
                log.info("loading %s version %s (serving: %s)", ref.name, ref.version, before)
                try:
                    new = self.source.load(ref)
                except Exception:
                    self._failed = (ref.version, ref.run_id, time.monotonic())
                    raise
                self.current = new  # the swap: one reference, loaded completely before
                self.last_error = None
                self._failed = None
                if self.on_load is not None:
                    self.on_load(new)
                log.info("serving %s version %s", new.name, new.version)
                return ReloadOutcome(before, new.version, True, None)
            except NoChampion as exc:
                self.last_error = str(exc)
            except Exception as exc:  # any failure must leave the old model serving
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("model reload failed, still serving %s: %s", before, self.last_error)
            return ReloadOutcome(before, before, False, self.last_error)

    def poll(self, stop: threading.Event, interval: float) -> None:
        """Load the champion now, then check every ``interval`` seconds until ``stop``.

        With ``interval`` 0 the alias is not watched, but a first load that
        failed (registry not up yet, no champion yet) is retried with growing
        pauses until a model is served: a service started before its registry
        should not need a manual reload.
        """
        self.check()
        if interval > 0:
            while not stop.wait(interval):
                self.check()
            return
        pause = INITIAL_RETRY_SECONDS
        while self.current is None and not stop.wait(pause):
            self.check()
            pause = min(pause * 2, MAX_INITIAL_RETRY_SECONDS)


# -- the app ----------------------------------------------------------------------------


def configured_token(params: Params) -> str | None:
    """The API token: the environment variable ``serve.token_env``, else ``serve.token_file``.

    Read on every call, so a rotated token applies without a restart.
    """
    serve = params.serve
    value = os.environ.get(serve.token_env, "").strip()
    if value:
        return value
    if serve.token_file:
        try:
            value = params.path(serve.token_file).read_text(encoding="utf-8").strip()
        except OSError:
            log.warning("serve.token_file %s cannot be read", serve.token_file)
            return None
        return value or None
    return None


@dataclass(frozen=True)
class _Scored:
    """One request's predictions before they are logged (the model's part of a batch)."""

    rows: list[NewPrediction]
    task: TaskType


def _prediction(prediction_id: str, row: NewPrediction, task: TaskType) -> Prediction:
    entities = task.per_token  # a per-token model answers spans, a per-text one labels
    return Prediction(
        prediction_id=prediction_id,
        label=row.label,
        confidence=row.confidence,
        top_k=[] if entities else [LabelScore(**x) for x in row.top_k],
        entities=[Entity(**x) for x in row.top_k] if entities else None,
        model_name=row.model_name,
        model_version=row.model_version,
    )


class StoreUnavailable(RuntimeError):
    """The feedback store refused a batch of predictions (answered 503)."""


def _review_item(p: PredictionRecord) -> ReviewItem:
    return ReviewItem(
        prediction_id=p.id,
        text=p.text,
        label=p.label,
        confidence=p.confidence,
        top_k=[LabelScore(**x) for x in p.top_k],
        model_name=p.model_name,
        model_version=p.model_version,
        created_at=p.created_at,
    )


def _check_texts(texts: list[str], params: Params) -> None:
    serve = params.serve
    if not texts:
        raise HTTPException(422, "'texts' is empty: send at least one text")
    if len(texts) > serve.max_batch:
        raise HTTPException(
            413,
            f"{len(texts)} texts in one request; the limit is {serve.max_batch} "
            "(serve.max_batch): split the batch",
        )
    for i, text in enumerate(texts):
        where = "text" if len(texts) == 1 else f"texts[{i}]"
        if not text.strip():
            raise HTTPException(422, f"{where} is empty or only whitespace")
        if len(text) > serve.max_text_chars:
            raise HTTPException(
                413,
                f"{where} has {len(text)} characters; the limit is {serve.max_text_chars} "
                "(serve.max_text_chars)",
            )


class LimitBody:
    """Refuse a request whose declared body exceeds ``max_body`` bytes, before reading it.

    Pure ASGI rather than ``@app.middleware("http")``: Starlette's
    BaseHTTPMiddleware adds a task group and memory streams to every request.
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 413 from the ``content-length`` header, else pass the request on."""
        if scope["type"] == "http":
            for key, value in scope["headers"]:
                if key == b"content-length":
                    if value.isdigit() and int(value) > self.max_body:
                        length = value.decode()
                        response = JSONResponse(
                            {
                                "detail": f"request body of {length} bytes; the limit is "
                                f"{self.max_body}"
                            },
                            status_code=413,
                        )
                        await response(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)


ANNOUNCED = "slmops_announced"  # request.state flag: counted as arriving at the batcher


class AnnounceArrivals:
    """Tell the batcher a ``POST /predict`` is arriving, before its body is read.

    The batcher waits for more requests only when some are on their way, so a
    lone request on an idle service is answered without waiting. Pure ASGI (no
    BaseHTTPMiddleware): it runs on every prediction and must cost nothing.
    """

    def __init__(self, app: ASGIApp, batcher: MicroBatcher[Any, Any]) -> None:
        self.app = app
        self.batcher = batcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the request as arriving until the endpoint queues it (or it ends)."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/predict":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[ANNOUNCED] = True
        self.batcher.announce()
        try:
            await self.app(scope, receive, send)
        finally:
            if state.get(ANNOUNCED):  # never queued (invalid, unauthorised, no model)
                state[ANNOUNCED] = False
                self.batcher.withdraw()


# Module level: FastAPI resolves the string annotations of the endpoint functions
# defined inside create_app against this module's globals.
_bearer = HTTPBearer(
    auto_error=False,
    description="The API token configured on the server (the environment variable named by "
    "serve.token_env, or serve.token_file).",
)
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong token."},
    503: {"model": ErrorResponse, "description": "No token configured, or no model loaded."},
}


def create_app(params: Params, *, model_loader: ModelSource | None = None) -> FastAPI:
    """The FastAPI app serving the champion of ``registry.model_name``.

    ``model_loader`` replaces the MLflow registry as the source of models. The
    model is loaded in the background once the app starts (``/health`` says
    ``loading`` until then) and the alias is polled every ``serve.poll_seconds``.
    """
    serve = params.serve
    holder = ModelHolder(model_loader or RegistrySource(params), params.registry.model_name)
    store = FeedbackStore.from_params(params)
    # Prometheus metrics on a registry of this app's own (GET /metrics).
    metrics = ServiceMetrics()
    holder.on_load = lambda m: metrics.set_model(m.name, m.version, m.format)
    # One inference at a time: torch already spreads one batch over every core,
    # and a Hugging Face fast tokenizer must not be called from two threads at
    # once ("Already borrowed").
    inference_limiter = anyio.CapacityLimiter(1)
    max_body = serve.max_batch * serve.max_text_chars * JSON_BYTES_PER_CHAR + BODY_OVERHEAD_BYTES

    batching = serve.batching

    def served() -> LoadedModel:
        loaded = holder.current
        if loaded is None:
            why = holder.last_error or "the model is still loading"
            raise HTTPException(503, f"no model loaded yet: {why}")
        return loaded

    def compute(requests: list[list[str]]) -> list[_Scored]:
        """The model's part, for one request or a batch of them (runs in a thread)."""
        # Read the reference once: the whole batch runs on one version, and a swap
        # during it does not affect it.
        loaded = served()
        task = loaded.task
        flat = [text for texts in requests for text in texts]
        answers = task.score(loaded.predictor, flat, chunk=batching.chunk_size, top_k=serve.top_k)
        rows = [
            NewPrediction(
                text=text,
                label=a.label,
                confidence=a.confidence,
                # A token classifier's entities are its answer's details, kept where
                # a text classifier keeps its runner-up labels.
                top_k=a.top_k if a.entities is None else a.entities,
                model_name=loaded.name,
                model_version=loaded.version,
            )
            for text, a in zip(flat, answers, strict=True)
        ]
        out, start = [], 0
        for texts in requests:
            out.append(_Scored(rows[start : start + len(texts)], task))
            start += len(texts)
        return out

    def finish(scored: list[_Scored]) -> list[PredictResponse]:
        """Log every prediction of the batch in one transaction; the answers per request."""
        rows = [row for s in scored for row in s.rows]
        try:
            ids = store.log_predictions(rows)
        except Exception as exc:
            # An answer whose id was not stored could never receive feedback.
            log.exception("feedback store write failed")
            raise StoreUnavailable(f"feedback store unavailable: {type(exc).__name__}") from exc
        answers, it = [], iter(zip(ids, rows, strict=True))
        for s in scored:
            metrics.observe_predictions(
                [c for r in s.rows for c in s.task.observed(r.label)],
                [r.confidence for r in s.rows],
            )
            answers.append(
                PredictResponse(
                    predictions=[
                        _prediction(pid, row, s.task) for pid, row in (next(it) for _ in s.rows)
                    ]
                )
            )
        return answers

    batcher: MicroBatcher[_Scored, PredictResponse] | None = None
    if batching.enabled:
        batcher = MicroBatcher(
            compute,
            finish,
            max_batch=batching.max_batch,
            max_wait_ms=batching.max_wait_ms,
            queue_size=batching.queue_size,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        poller = threading.Thread(
            target=holder.poll,
            args=(stop, serve.poll_seconds),
            name="slmops-model-poller",
            daemon=True,  # a load stuck on the network must not keep the process alive
        )
        poller.start()
        if batcher is not None:
            batcher.start()
        try:
            yield
        finally:
            if batcher is not None:
                await batcher.stop()
            stop.set()
            await anyio.to_thread.run_sync(poller.join, POLLER_JOIN_SECONDS)
            if poller.is_alive():
                log.warning("model poller still busy after %.0f s; leaving it", POLLER_JOIN_SECONDS)
            store.close()

    app = FastAPI(
        title="SLMOps prediction service",
        version="1",
        description="Serves the `champion` of the MLflow registry and collects feedback "
        "on its answers. Write endpoints need `Authorization: Bearer <token>`.",
        lifespan=lifespan,
    )
    app.state.holder = holder
    app.state.store = store
    app.state.batcher = batcher
    if batcher is not None:
        app.add_middleware(AnnounceArrivals, batcher=batcher)

    app.add_middleware(LimitBody, max_body=max_body)
    app.state.metrics = metrics
    # Added last, so outermost: it also times and counts what LimitBody refuses.
    app.add_middleware(RecordRequests, metrics=metrics)

    # The dependencies are `async def` although they never await: FastAPI runs a
    # plain `def` dependency on a worker thread, one thread hop per request for
    # nothing (they only compare strings; the token file is a few bytes).
    async def require_token(
        credentials: BearerCredentials,
    ) -> None:
        expected = configured_token(params)
        if expected is None:
            raise HTTPException(
                503,
                "this endpoint is disabled until an API token is configured: set the "
                f"environment variable {serve.token_env} (or serve.token_file in params.yaml) "
                "on the server",
            )
        if credentials is None:
            raise HTTPException(
                401,
                "missing token: send the header 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        # Constant-time comparison: response timing reveals nothing about the token.
        if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
            raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})

    async def require_read(
        credentials: BearerCredentials,
    ) -> None:
        if serve.protect_reads:
            await require_token(credentials)

    @app.post(
        "/predict",
        response_model=PredictResponse,
        dependencies=[Depends(require_read)],
        responses={
            413: {"model": ErrorResponse, "description": "Too many texts, or a text too long."},
            422: {"description": "Blank text, or neither/both of `text` and `texts`."},
            **AUTH_RESPONSES,
        },
        summary="Classify one text or a batch",
    )
    async def predict(body: PredictRequest, request: Request) -> PredictResponse:
        texts = body.all_texts()
        _check_texts(texts, params)
        served()  # no model: 503 now, without queueing
        try:
            if batcher is not None:
                if getattr(request.state, ANNOUNCED, False):
                    setattr(request.state, ANNOUNCED, False)
                    batcher.withdraw()  # it is about to be queued, no longer "arriving"
                return await batcher.submit(texts)
            scored = await anyio.to_thread.run_sync(compute, [texts], limiter=inference_limiter)
            return (await anyio.to_thread.run_sync(finish, scored))[0]
        except HTTPException as exc:
            # A batch shares one exception object among its requests: raise a copy.
            raise HTTPException(exc.status_code, exc.detail, headers=exc.headers) from None
        except QueueFull as exc:
            raise HTTPException(
                503, str(exc), headers={"Retry-After": QUEUE_FULL_RETRY_AFTER}
            ) from None
        except (StoreUnavailable, BatcherClosed) as exc:
            raise HTTPException(503, str(exc)) from None
        except Exception as exc:
            if batcher is None:  # the batcher logs its failed batches itself
                log.exception("prediction failed")
            raise HTTPException(
                500,
                f"the model failed on the batch holding this request ({type(exc).__name__}); "
                "the service log has the details, and later requests are not affected",
            ) from None

    @app.post(
        "/feedback",
        response_model=FeedbackResponse,
        status_code=201,
        dependencies=[Depends(require_token)],
        responses={
            200: {"model": FeedbackResponse, "description": "Identical feedback already stored."},
            404: {"model": ErrorResponse, "description": "Unknown prediction id."},
            422: {"model": UnknownLabelResponse, "description": "Label not in the label set."},
            **AUTH_RESPONSES,
        },
        summary="Correct or confirm a prediction",
    )
    def feedback(body: FeedbackRequest, response: Response) -> Any:
        loaded = served()
        entities = loaded.task.per_token
        given = {"label": body.label is not None, "entities": body.entities is not None}
        want = "entities" if entities else "label"
        if not given[want] or sum(given.values()) != 1:
            # Checked here, not in the request model: the answer depends on the model served.
            shape = "a list of spans" if entities else "a string"
            what = "missing or null" if not given[want] else "sent with the other field"
            return JSONResponse(
                {
                    "detail": f"{want} {what}: the served model is {loaded.task.name.value}; "
                    f"send '{want}' ({shape}) only",
                    "valid_labels": loaded.label_set,
                },
                status_code=422,
            )
        try:
            row, created = store.add_feedback(
                body.prediction_id, body.label_cell(), loaded.label_set, body.user, task=loaded.task
            )
        except UnknownPrediction as exc:
            raise HTTPException(404, str(exc)) from None
        except (UnknownLabel, InvalidLabel) as exc:
            return JSONResponse(
                {"detail": str(exc), "valid_labels": exc.known_labels}, status_code=422
            )
        if not created:
            response.status_code = status.HTTP_200_OK
        return FeedbackResponse(
            feedback_id=row.id,
            prediction_id=row.prediction_id,
            label=row.label,
            kind=row.kind,
            user=row.user,
            created_at=row.created_at,
            created=created,
        )

    @app.get(
        "/review",
        response_model=ReviewResponse,
        dependencies=[Depends(require_read)],
        responses=AUTH_RESPONSES,
        summary="Unreviewed predictions, least confident first",
    )
    def review(
        limit: Annotated[
            int | None,
            Query(ge=1, le=MAX_REVIEW_ROWS, description="Rows (default: serve.review_limit)."),
        ] = None,
        since: Annotated[
            datetime | None,
            Query(description="Only predictions made at or after this time (ISO 8601)."),
        ] = None,
    ) -> ReviewResponse:
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)  # a time without zone is read as UTC
        rows = store.review_queue(limit or serve.review_limit, since=since)
        return ReviewResponse(items=[_review_item(p) for p in rows])

    @app.get(
        "/health",
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse, "description": "No model loaded."}},
        summary="Liveness and readiness",
    )
    async def health() -> Any:
        # async: a plain def would cost every health probe a worker-thread hop.
        loaded = holder.current
        body = HealthResponse(
            status=holder.status,
            model_name=holder.name,
            model_version=loaded.version if loaded else None,
            loaded_at=loaded.loaded_at if loaded else None,
            last_checked_at=holder.last_checked_at,
            last_error=holder.last_error,
            model_format=loaded.format if loaded else None,
            format_warning=loaded.format_warning if loaded else None,
        )
        # 503 without a model, so a load balancer sends no traffic here yet.
        code = 200 if loaded is not None else 503
        return JSONResponse(body.model_dump(mode="json"), status_code=code)

    @app.get(
        "/stats",
        response_model=StatsResponse,
        dependencies=[Depends(require_read)],
        responses=AUTH_RESPONSES,
        summary="Micro-batching counters",
    )
    async def stats() -> StatsResponse:
        counters = (batcher.stats if batcher is not None else BatchStats()).as_dict()
        return StatsResponse(
            batching=BatchingStats(
                enabled=batcher is not None,
                max_batch=batching.max_batch,
                max_wait_ms=batching.max_wait_ms,
                queue_size=batching.queue_size,
                queue_depth=batcher.queue_depth() if batcher is not None else 0,
                **counters,
            )
        )

    @app.get(
        "/metrics",
        dependencies=[Depends(require_read)],
        # Prometheus text, not JSON: left out of the OpenAPI schema (README: Monitoring).
        include_in_schema=False,
    )
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(content=body, media_type=content_type)

    @app.get(
        "/model",
        response_model=ModelResponse,
        dependencies=[Depends(require_read)],
        responses=AUTH_RESPONSES,
        summary="The served model version",
    )
    async def model() -> ModelResponse:
        loaded = served()
        return ModelResponse(
            name=loaded.name,
            version=loaded.version,
            run_id=loaded.run_id,
            task=loaded.task.name.value,
            labels=loaded.label_set,
            loaded_at=loaded.loaded_at,
            source=loaded.source,
            format=loaded.format,
            requested_format=loaded.requested_format,
            format_warning=loaded.format_warning,
        )

    @app.post(
        "/admin/reload",
        response_model=ReloadResponse,
        dependencies=[Depends(require_token)],
        responses={
            502: {"model": ReloadResponse, "description": "The reload failed; old model kept."},
            **AUTH_RESPONSES,
        },
        summary="Check the champion alias now and swap if it moved",
    )
    def reload() -> Any:
        outcome = holder.check(force=True)
        body = ReloadResponse(
            previous_version=outcome.previous_version,
            version=outcome.version,
            changed=outcome.changed,
            status=holder.status,
            error=outcome.error,
        )
        # 502: the registry or the version's artifacts failed us, not the request.
        code = 502 if outcome.error else 200
        return JSONResponse(body.model_dump(mode="json"), status_code=code)

    return app


LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# MLflow's HTTP defaults (7 retries with exponential backoff, 120 s timeout) keep a
# poll stuck for minutes when the tracking server is down; the service would
# rather report "degraded" quickly and try again at the next poll. Only the
# server process sets these, and an operator's own values win.
SERVING_MLFLOW_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


def run(
    params: Params,
    *,
    host: str | None = None,
    port: int | None = None,
    model_loader: ModelSource | None = None,
) -> None:
    """Serve ``create_app(params)`` with uvicorn on ``serve.host:serve.port`` (or the overrides).

    ``model_loader`` replaces the registry as the source of models (the service
    benchmark serves a model folder through it).
    """
    import uvicorn

    host = host or params.serve.host
    port = port or params.serve.port
    for key, value in SERVING_MLFLOW_HTTP.items():
        os.environ.setdefault(key, value)
    if host not in LOOPBACK and not params.serve.protect_reads:
        log.warning(
            "listening on %s with serve.protect_reads false: anyone who can reach it can read "
            "predictions and the review queue",
            host,
        )
    if configured_token(params) is None:
        log.warning(
            "no API token configured (%s or serve.token_file): /feedback and /admin/reload "
            "answer 503",
            params.serve.token_env,
        )
    uvicorn.run(
        create_app(params, model_loader=model_loader), host=host, port=port, log_level="info"
    )
