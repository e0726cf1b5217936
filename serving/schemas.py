"""The service's request and response bodies (pydantic), as its OpenAPI schema names them.

The class names are the schema's component names: clients and the OpenAPI
fuzz test rely on them, so renaming one changes the published API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

HealthStatus = Literal["ok", "degraded", "loading"]


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
        default=None,
        max_length=255,
        deprecated=True,
        description="Deprecated and ignored (still accepted, so older clients keep working): "
        "the reviewer recorded is the principal of the API key that sent the feedback.",
    )


class FeedbackResponse(BaseModel):
    """The stored feedback."""

    feedback_id: int
    prediction_id: str
    label: str
    kind: Literal["correction", "confirmation"] = Field(
        description="`correction` when the label differs from the prediction's."
    )
    user: str | None = Field(
        description="The reviewer: the principal of the API key that sent the feedback."
    )
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
    prediction_backlog: int | None = Field(
        default=None,
        description="Predictions answered and not yet committed to the feedback store (the "
        "background writer; growing: the database is down or behind); null when each request "
        "commits its own.",
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


class LabelStudioHook(BaseModel):
    """What Label Studio POSTs to a webhook: the action, and (with "send payload") the
    project, task and annotation; only the action and the project are read."""

    model_config = ConfigDict(extra="allow")

    action: str = Field(description="e.g. ANNOTATION_CREATED, ANNOTATION_UPDATED")
    project: dict | None = Field(default=None, description="the project (id, title, ...)")


class HookResponse(BaseModel):
    """What the service did with a webhook call."""

    outcome: Literal["sent", "scheduled", "ignored"] = Field(
        description="`sent`: the Prefect event went out now; `scheduled`: one goes out at "
        "`at` (one per serve.hook_interval_seconds); `ignored`: the action changes no label"
    )
    event: str | None = Field(description="the Prefect event's name")
    at: datetime | None = Field(default=None, description="when a scheduled event goes out")
    detail: str
