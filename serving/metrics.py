"""Prometheus metrics of the prediction service, exported at ``GET /metrics``.

What is exported (names as Prometheus sees them):

- ``slmops_requests_total{endpoint,method,status}``: requests answered, by route
  template (``/predict``, never a raw path: unknown paths count as ``(unmatched)``,
  so a scanner cannot blow up the number of series) and HTTP status code;
- ``slmops_request_duration_seconds{endpoint,method}``: a latency histogram,
  from the first byte of the request to the end of the answer;
- ``slmops_predictions_total{label}``: predictions answered, per predicted label
  (for named-entity recognition: per entity type found);
- ``slmops_prediction_confidence``: a histogram of the confidence (score) of
  those predictions;
- ``slmops_model_info{name,version,format}``: 1 for the model version being
  served (the series changes when the champion alias moves and the service swaps);
- ``slmops_prediction_log_backlog``: predictions answered and not yet committed to
  the feedback store, ``slmops_prediction_log_rows_total``,
  ``slmops_prediction_log_commits_total``, ``slmops_prediction_log_failed_commits_total``
  (retried) and ``slmops_prediction_log_rejected_rows_total``: the background writer
  (``serve.prediction_log``), read at each scrape.

The request series are recorded by :class:`slmops.serving.middleware.RecordRequests`,
the prediction series by :mod:`slmops.serving.predictions`.

Each app gets its own :class:`~prometheus_client.CollectorRegistry`: the tests
build many apps in one process, and the process-wide default registry refuses a
second metric of the same name. The default registry's process and platform
collectors are not added either (one scrape target per service, no surprises).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from slmops.tasks.feedback.prediction_log import LogStats

NAMESPACE = "slmops"

# Latency buckets (seconds): a batch-1 prediction takes a few ms on a CPU, a
# batch of 64 or a request waiting in a busy queue up to seconds.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Confidence buckets: finer near 1, where a healthy classifier puts most answers,
# so a drop from 0.99 to 0.9 shows.
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


# A client chooses the request method: any other token it sends would be a new
# label value, hence a new time series each, without bound.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"


class _PredictionLogCollector:
    """The background writer's counters, read from it at each scrape (it keeps them)."""

    def __init__(self, stats: Callable[[], LogStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats()
        name = f"{NAMESPACE}_prediction_log"
        yield GaugeMetricFamily(
            f"{name}_backlog",
            "Predictions answered and not yet committed to the feedback store.",
            value=s.backlog,
        )
        yield CounterMetricFamily(
            f"{name}_rows", "Predictions committed by the background writer.", s.committed_rows
        )
        yield CounterMetricFamily(
            f"{name}_commits", "Transactions committed by the background writer.", s.commits
        )
        yield CounterMetricFamily(
            f"{name}_failed_commits",
            "Commits of predictions that failed (each retried, its rows kept).",
            s.failed_commits,
        )
        yield CounterMetricFamily(
            f"{name}_rejected_rows",
            "Predictions the database refused for themselves (logged with their ids).",
            s.rejected_rows,
        )


class ServiceMetrics:
    """The service's metrics on a registry of their own; thread-safe (prometheus_client is).

    ``observe_*`` and ``set_model`` are called from the request path, the
    batcher's threads and the model poller; :meth:`render` from ``/metrics``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "requests",
            "HTTP requests answered, by route template, method and status code.",
            ["endpoint", "method", "status"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.latency = Histogram(
            "request_duration_seconds",
            "Time from receiving a request to the end of its answer, by route template.",
            ["endpoint", "method"],
            namespace=NAMESPACE,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "predictions",
            "Predictions answered, per predicted label (per entity type for NER).",
            ["label"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.confidence = Histogram(
            "prediction_confidence",
            "Confidence (probability or score) of the answered predictions.",
            namespace=NAMESPACE,
            buckets=CONFIDENCE_BUCKETS,
            registry=self.registry,
        )
        self.model = Gauge(
            "model_info",
            "1 for the model version being served (name, version, serving format).",
            ["name", "version", "format"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self._model_lock = threading.Lock()

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency; ``endpoint`` is the route template,
        ``method`` is kept only when it is a standard HTTP method (else ``OTHER``)."""
        method = method if method in HTTP_METHODS else OTHER_METHOD
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint, method).observe(max(seconds, 0.0))

    def observe_predictions(self, labels: Sequence[str], confidences: Sequence[float]) -> None:
        """Count predicted labels and record confidences, as plain lists.

        The two lists are counted independently: a text classifier gives one
        label and one confidence per text; a named-entity recogniser may give
        several entity types (and their scores) per text, or none.
        """
        for label in labels:
            self.predictions.labels(str(label)).inc()
        for value in confidences:
            self.confidence.observe(float(value))

    def set_model(self, name: str, version: str, fmt: str) -> None:
        """Mark ``name`` version ``version`` (served as ``fmt``) as the one serving now.

        The previous version's series is removed, so ``slmops_model_info`` always
        has exactly one series at 1 once a model is loaded.
        """
        with self._model_lock:  # a swap clears and sets: two swaps must not interleave
            self.model.clear()
            self.model.labels(str(name), str(version), str(fmt)).set(1)

    def watch_prediction_log(self, stats: Callable[[], LogStats]) -> None:
        """Export the background writer's backlog and counters, read from ``stats``."""
        self.registry.register(_PredictionLogCollector(stats))

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
