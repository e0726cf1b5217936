"""GET /metrics: Prometheus counters and histograms of requests, predictions and the model."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from slmops.serving.app import create_app
from slmops.serving.metrics import ServiceMetrics
from tests.serving.conftest import auth, wait_until_loaded

TEXTS = ["my card has not arrived yet", "what exchange rate do you use?", "top up failed"]


def scrape(client: TestClient, **kwargs) -> dict[str, list]:
    """``/metrics`` parsed: sample name -> [(labels, value), ...]."""
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(samples: dict, name: str, **labels) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        v for got, v in samples.get(name, []) if all(got.get(k) == x for k, x in labels.items())
    )


def test_requests_latency_predictions_and_model_are_exported(params, registry):
    with TestClient(create_app(params)) as client:
        wait_until_loaded(client)
        answers = []
        for text in TEXTS:
            r = client.post("/predict", json={"text": text})
            assert r.status_code == 200, r.text
            answers += r.json()["predictions"]
        r = client.post("/predict", json={"texts": TEXTS[:2]})
        answers += r.json()["predictions"]
        assert client.post("/predict", json={"text": "  "}).status_code == 422
        assert client.get("/no/such/path/123").status_code == 404
        # Refused by the body-size middleware before routing: still counted under /predict.
        big = client.post("/predict", content=b"x" * 2_000_000, headers={"content-type": "a/b"})
        assert big.status_code == 413
        samples = scrape(client)

    predict = {"endpoint": "/predict", "method": "POST"}
    assert value(samples, "slmops_requests_total", status="200", **predict) == 4
    assert value(samples, "slmops_requests_total", status="422", **predict) == 1
    assert value(samples, "slmops_requests_total", status="413", **predict) == 1
    # A path no route matches is one series, whatever the path: bounded cardinality.
    assert value(samples, "slmops_requests_total", endpoint="(unmatched)", status="404") == 1
    assert not any("/no/such" in str(labels) for labels, _ in samples["slmops_requests_total"])
    assert value(samples, "slmops_request_duration_seconds_count", **predict) == 6
    assert value(samples, "slmops_request_duration_seconds_sum", **predict) > 0
    # The health polls of wait_until_loaded were timed too.
    assert value(samples, "slmops_request_duration_seconds_count", endpoint="/health") >= 1

    # One count per answered prediction, under its label; the 422 predicted nothing.
    assert value(samples, "slmops_predictions_total") == len(answers) == 5
    for label in {a["label"] for a in answers}:
        expected = sum(a["label"] == label for a in answers)
        assert value(samples, "slmops_predictions_total", label=label) == expected
    assert value(samples, "slmops_prediction_confidence_count") == 5
    total = sum(a["confidence"] for a in answers)
    assert value(samples, "slmops_prediction_confidence_sum") == pytest.approx(total, rel=1e-6)
    assert value(samples, "slmops_prediction_confidence_bucket", le="+Inf") == 5

    (model,) = samples["slmops_model_info"]
    assert model[0]["name"] == registry.name and model[0]["version"] == "1"
    assert model[0]["format"] and model[1] == 1.0


def test_metrics_follow_protect_reads(make_params):
    with TestClient(create_app(make_params(protect_reads=True))) as client:
        assert client.get("/metrics").status_code == 401
        samples = scrape(client, headers=auth())
    assert value(samples, "slmops_requests_total", endpoint="/metrics", status="401") == 1


def test_two_apps_in_one_process_keep_their_own_counts():
    # Separate registries: no "Duplicated timeseries" error, no shared counts.
    a, b = ServiceMetrics(), ServiceMetrics()
    a.observe_predictions(["x", "y", "x"], [0.9, 0.8, 0.7])
    # NER style: several entity types for one text, counted independently of scores.
    b.observe_predictions(["PER", "LOC"], [0.99])
    a.set_model("m", "1", "torch")
    a.set_model("m", "2", "onnx")  # a swap replaces the series
    text_a, content_type = a.render()
    assert content_type.startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(text_a.decode())}
    counts = {s.labels["label"]: s.value for s in fams["slmops_predictions"].samples}
    assert counts == {"x": 2.0, "y": 1.0}
    assert [s.labels for s in fams["slmops_model_info"].samples] == [
        {"name": "m", "version": "2", "format": "onnx"}
    ]
    fams_b = {f.name: f for f in text_string_to_metric_families(b.render()[0].decode())}
    assert {s.labels["label"] for s in fams_b["slmops_predictions"].samples} == {"PER", "LOC"}


def test_a_made_up_method_does_not_become_a_label_value(params, registry):
    """Clients choose the method token: anything but a standard method is one label,
    OTHER, however many different tokens arrive."""
    with TestClient(create_app(params)) as client:
        for i in range(5):
            client.request(f"BREW{i}", "/predict")
        client.get("/health")
        text = client.get("/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    methods = {s.labels["method"] for s in fams["slmops_requests"].samples}
    assert methods <= {"GET", "OTHER"} and "OTHER" in methods
    other = [
        s.value
        for s in fams["slmops_requests"].samples
        if s.name == "slmops_requests_total" and s.labels["method"] == "OTHER"
    ]
    assert sum(other) == 5
