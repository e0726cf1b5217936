"""A prediction's two stages: the model's answers, then logging them to the feedback store.

Both stages take a list of requests (each a list of texts), so that one
``/predict`` and a micro-batch of them (``serve.batching``,
:mod:`slmops.serving.batcher`) run the same code: concurrent requests share
one model call. Logging queues the predictions for the background writer
(``serve.prediction_log``, :mod:`slmops.tasks.feedback.prediction_log`), which
commits them after the answer is sent; with ``background: false`` a batch
commits its predictions in one transaction before answering. A batch reads the served
model once, so it runs entirely on one version, and every prediction reports
the version that computed it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from slmops.serving.batcher import MicroBatcher
from slmops.serving.holder import ModelHolder
from slmops.serving.metrics import ServiceMetrics
from slmops.serving.schemas import Entity, LabelScore, Prediction, PredictResponse
from slmops.tasks.core.config import BatchingConfig
from slmops.tasks.core.task_type import Scored, TaskType
from slmops.tasks.feedback.prediction_log import LogClosed, LogFull, PredictionLog
from slmops.tasks.feedback.store import FeedbackStore, NewPrediction

log = logging.getLogger(__name__)


class StoreUnavailable(RuntimeError):
    """The feedback store refused a batch of predictions, or the background writer's
    backlog stayed full (answered 503)."""


class Asked(tuple[str, ...]):
    """One request's texts and the principal that sent them (None: anonymous).

    A tuple of the texts, so the batcher queues it like any sequence of texts
    and hands the very object to :meth:`Predictions.compute`.
    """

    principal: str | None

    def __new__(cls, texts: Iterable[str], principal: str | None = None) -> Asked:
        asked = super().__new__(cls, texts)
        asked.principal = principal
        return asked


@dataclass(frozen=True)
class ScoredRequest:
    """One request's predictions before they are logged (the model's part of a batch)."""

    rows: list[NewPrediction]
    answers: list[Scored]
    task: TaskType


def _prediction(prediction_id: str, row: NewPrediction, answer: Scored) -> Prediction:
    # The answer carries what its task type has: runner-up labels, or entities.
    return Prediction(
        prediction_id=prediction_id,
        label=row.label,
        confidence=row.confidence,
        top_k=[LabelScore(**x) for x in answer.top_k],
        entities=None if answer.entities is None else [Entity(**x) for x in answer.entities],
        model_name=row.model_name,
        model_version=row.model_version,
    )


class Predictions:
    """Answers requests with the served model and logs every answer.

    :meth:`compute` runs the model (on the inference thread), :meth:`finish`
    writes the store (on another thread, when batching overlaps the two).
    """

    def __init__(
        self,
        holder: ModelHolder,
        store: FeedbackStore,
        metrics: ServiceMetrics,
        *,
        chunk: int,
        top_k: int,
        log: PredictionLog | None = None,
    ) -> None:
        self.holder = holder
        self.store = store
        self.metrics = metrics
        self.chunk = chunk
        self.top_k = top_k
        # The background writer (serve.prediction_log.background); None: commit here.
        self.log = log

    def compute(self, requests: Sequence[Sequence[str]]) -> list[ScoredRequest]:
        """The model's part, for one request or a batch of them (runs in a thread).

        A request given as :class:`Asked` records its principal with its predictions.

        :class:`~slmops.serving.holder.NoModel` while no model is loaded.
        """
        # Read the reference once: the whole batch runs on one version, and a swap
        # during it does not affect it.
        loaded = self.holder.serving()
        task = loaded.task
        flat = [text for texts in requests for text in texts]
        asked = [getattr(texts, "principal", None) for texts in requests for _ in texts]
        answers = task.score(loaded.predictor, flat, chunk=self.chunk, top_k=self.top_k)
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
                principal=principal,
            )
            for text, a, principal in zip(flat, answers, asked, strict=True)
        ]
        out, start = [], 0
        for texts in requests:
            end = start + len(texts)
            out.append(ScoredRequest(rows[start:end], answers[start:end], task))
            start = end
        return out

    def finish(self, scored: list[ScoredRequest]) -> list[PredictResponse]:
        """Log every prediction of the batch (queued for the background writer, else in
        one transaction); the answers per request. May block: runs on a thread."""
        rows = [row for s in scored for row in s.rows]
        try:
            # Not started (an app used without its lifespan): commit here instead.
            if self.log is not None and self.log.running:
                ids = self.log.submit(rows)
            else:
                ids = self.store.log_predictions(rows)
        except (LogFull, LogClosed) as exc:
            raise StoreUnavailable(str(exc)) from exc
        except Exception as exc:
            # An answer whose id was not stored could never receive feedback.
            log.exception("feedback store write failed")
            raise StoreUnavailable(f"feedback store unavailable: {type(exc).__name__}") from exc
        assert ids is not None  # a waiting submit always queues or raises
        return self._responses(scored, ids)

    def finish_now(self, scored: list[ScoredRequest]) -> list[PredictResponse] | None:
        """:meth:`finish` without blocking, for the event loop: None when it would block
        (no background writer, or its backlog full), so that :meth:`finish` runs instead."""
        if self.log is None or not self.log.running:
            return None
        try:
            ids = self.log.submit([row for s in scored for row in s.rows], wait=False)
        except LogClosed:
            return None  # closing meanwhile: finish commits them itself
        return None if ids is None else self._responses(scored, ids)

    def _responses(self, scored: list[ScoredRequest], ids: list[str]) -> list[PredictResponse]:
        """The answers per request, the predictions counted in the metrics."""
        responses, start = [], 0
        for s in scored:
            self.metrics.observe_predictions(
                [c for r in s.rows for c in s.task.observed(r.label)],
                [r.confidence for r in s.rows],
            )
            end = start + len(s.rows)
            predictions = [
                _prediction(pid, row, a)
                for pid, row, a in zip(ids[start:end], s.rows, s.answers, strict=True)
            ]
            responses.append(PredictResponse(predictions=predictions))
            start = end
        return responses

    def batcher(self, batching: BatchingConfig) -> MicroBatcher[ScoredRequest, PredictResponse]:
        """A micro-batcher running these two stages with ``serve.batching``'s sizes."""
        return MicroBatcher(
            self.compute,
            self.finish,
            finish_now=self.finish_now,
            max_batch=batching.max_batch,
            max_wait_ms=batching.max_wait_ms,
            queue_size=batching.queue_size,
        )
