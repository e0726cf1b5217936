"""The service and the feedback store under concurrent load on 127.0.0.1 (issue 6, item 3).

The real service (``python -m slmops.serving``, uvicorn, micro-batching on as configured by
default, the session's tiny model) in its own process; 32 client threads x 500 requests
(``SLMOPS_LOAD_CLIENTS``, ``SLMOPS_LOAD_REQUESTS``), each over one keep-alive
``http.client`` connection, mixing ``/predict`` (one text, sometimes several) and
``/feedback`` for ids the clients received: their own (first send 201, repeats 200),
a shared set that every client sends identical feedback for (exactly one 201 per pair
and client: each reviewer's agreement is a vote of its own), and deliberate 4xx
(unknown id 404, unknown label 422, no or a wrong key 401). Each client has an API key
of its own (principal ``client-<i>``, role reviewer), so the store must also credit
every row to the key that sent it. Midway the champion alias moves to a version whose
weights do not load and ``/admin/reload`` fails: the old version must keep serving
without one error.

Every unexpected status and every connection error is a failure. Afterwards the
feedback store is read directly: every prediction id a client received exists exactly
once with the text it sent, nothing else exists, and the feedback rows are exactly the
201 answers. Requests/s, latency percentiles per endpoint and CPU per request are printed
(``-s``) and written to ``load.json`` under the test's tmp path, and to the file named by
``SLMOPS_LOAD_REPORT`` if set (``tests/README.md``, "Load", has a recorded run).

The second test drives the store alone: 32 writer threads racing on the same feedback
while an ingestion consumer follows its watermark; every row is read exactly once.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from slmops.serving.background import free_port
from slmops.tasks.core.config import parse_params
from slmops.tasks.feedback.keys import KeyStore
from slmops.tasks.feedback.store import (
    FeedbackStore,
    NewPrediction,
    feedback_table,
    predictions_table,
)
from slmops.tasks.task_types import task_type
from tests.conftest import TINY_LABELS
from tests.serving.conftest import TOKEN, set_champion

SEQUENCE = task_type("sequence_classification")

CLIENTS = int(os.environ.get("SLMOPS_LOAD_CLIENTS", "32"))
REQUESTS = int(os.environ.get("SLMOPS_LOAD_REQUESTS", "500"))
# Feedback on a client's own ids uses these labels; the last label is only ever sent
# without a valid token, so no feedback row may carry it.
VALID_LABELS = TINY_LABELS[:-1]
REJECTED_LABEL = TINY_LABELS[-1]
SENTENCES = [
    "my card has not arrived yet",
    "what exchange rate do you use for euros?",
    "I think someone stole my card",
    "top up failed again",
    "my balance did not update after the transfer",
]
OWN_KEY = "<the client's own key>"  # Client.send's default: the client's API key


@dataclass
class Sent:
    """One request and its outcome."""

    kind: str  # predict, predict_batch, feedback, feedback_repeat, feedback_shared, bad_*
    status: int | None  # None: a connection error
    seconds: float
    body: dict | None = None
    expected: tuple[int, ...] = ()
    payload: dict | None = None


@dataclass
class Shared:
    """What the clients share: the pairs everyone sends, and progress for the reload."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: int = 0


class Client:
    """One client thread: one keep-alive connection, ``REQUESTS`` requests."""

    def __init__(self, index: int, port: int, shared: Shared, key: str) -> None:
        self.index = index
        self.key = key  # the API key of principal client-<index>
        self.port = port
        self.shared = shared
        self.rng = random.Random(index)
        self.conn = self.connect()
        self.sent: list[Sent] = []
        self.own: list[str] = []  # prediction ids this client may give feedback on
        self.given: dict[tuple[str, str], int] = {}  # own pair -> feedback id
        self.texts: dict[str, str] = {}  # prediction id -> the text sent
        self.published = False
        self.problems: list[str] = []

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def post(self, path: str, payload: dict, headers: dict[str, str]) -> tuple[int | None, dict]:
        body = json.dumps(payload).encode()
        try:
            self.conn.request("POST", path, body, {"Content-Type": "application/json", **headers})
            response = self.conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            self.conn = self.connect()
            return None, {"error": repr(exc)}
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, {"raw": data[:200].decode(errors="replace")}

    def send(self, kind: str, path: str, payload: dict, expected: tuple[int, ...], token=OWN_KEY):
        token = self.key if token == OWN_KEY else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        start = time.perf_counter()
        status, body = self.post(path, payload, headers)
        self.sent.append(Sent(kind, status, time.perf_counter() - start, body, expected, payload))
        return status, body

    def predict(self, j: int) -> None:
        n = 1 if self.rng.random() < 0.8 else self.rng.randint(2, 4)
        # Unique texts: an answer routed to the wrong caller would show in the store.
        texts = [
            f"client {self.index} request {j} text {k}: {self.rng.choice(SENTENCES)}"
            for k in range(n)
        ]
        payload = {"text": texts[0]} if n == 1 else {"texts": texts}
        status, body = self.send(
            "predict" if n == 1 else "predict_batch", "/predict", payload, (200,)
        )
        if status != 200:
            return
        ids = [p["prediction_id"] for p in body["predictions"]]
        self.texts.update(zip(ids, texts, strict=True))
        if not self.published:  # the client's first id is everyone's to label
            with self.shared.lock:
                self.shared.pairs.append((ids[0], VALID_LABELS[self.index % len(VALID_LABELS)]))
            self.published = True
            ids = ids[1:]
        self.own.extend(ids)

    def feedback(self, j: int) -> None:
        roll = self.rng.random()
        if roll < 0.45 and self.own:
            pid, label = self.rng.choice(self.own), self.rng.choice(VALID_LABELS)
            repeat = (pid, label) in self.given
            payload = {"prediction_id": pid, "label": label, "user": f"client-{self.index}"}
            kind = "feedback_repeat" if repeat else "feedback"
            status, body = self.send(kind, "/feedback", payload, (200,) if repeat else (201,))
            if status in (200, 201):
                if repeat and body["feedback_id"] != self.given[(pid, label)]:
                    self.problems.append(f"repeat of {pid}/{label} answered {body}")
                self.given.setdefault((pid, label), body["feedback_id"])
        elif roll < 0.7 and self.shared.pairs:
            with self.shared.lock:
                pid, label = self.rng.choice(self.shared.pairs)
            payload = {"prediction_id": pid, "label": label, "user": f"client-{self.index}"}
            self.send("feedback_shared", "/feedback", payload, (200, 201))
        else:
            pid = self.rng.choice(self.own or list(self.texts))
            which = self.rng.randrange(4)
            if which == 0:
                payload = {"prediction_id": uuid.uuid4().hex, "label": VALID_LABELS[0]}
                self.send("bad_unknown_id", "/feedback", payload, (404,))
            elif which == 1:
                payload = {"prediction_id": pid, "label": f"not_a_label_{j}"}
                self.send("bad_label", "/feedback", payload, (422,))
            else:
                payload = {"prediction_id": pid, "label": REJECTED_LABEL, "user": "rejected"}
                token = None if which == 2 else "wrong-token"
                self.send("bad_token", "/feedback", payload, (401,), token=token)

    def run(self, start: threading.Barrier) -> None:
        start.wait()
        for j in range(REQUESTS):
            if j == 0 or self.rng.random() < 0.5:
                self.predict(j)
            else:
                self.feedback(j)
            with self.shared.lock:
                self.shared.done += 1
        self.conn.close()


def percentiles(seconds: list[float]) -> dict[str, float]:
    """Count and p50/p95/p99/max latency in milliseconds (nearest rank)."""
    if not seconds:
        return {"count": 0}
    ordered = sorted(seconds)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {
        "count": len(ordered),
        "p50_ms": rank(0.50),
        "p95_ms": rank(0.95),
        "p99_ms": rank(0.99),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def get(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def post(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_service(params_file: Path, port: int, log_file: Path) -> subprocess.Popen:
    """``python -m slmops.serving`` on 127.0.0.1:``port``; returns once a model is served."""
    env = {**os.environ, "SLMOPS_API_TOKEN": TOKEN}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "slmops.serving",
                "--params",
                str(params_file),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 180
    while True:
        try:
            if get(port, "/health")[0] == 200:
                return proc
        except (OSError, http.client.HTTPException, ValueError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the service did not start:\n{log_file.read_text()[-3000:]}")
        time.sleep(0.25)


@pytest.mark.slow
def test_service_under_concurrent_load_loses_and_duplicates_nothing(
    make_params, registry, tmp_path
):
    params = make_params()  # resets the champion; the service reads params_file below
    raw = {
        "registry": {"tracking_uri": registry.uri, "model_name": registry.name},
        # SLMOPS_LOAD_SERVE: serve settings to measure, as JSON ('{"num_threads": 1}').
        "serve": {"poll_seconds": 0, **json.loads(os.environ.get("SLMOPS_LOAD_SERVE", "{}"))},
    }
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    port = free_port()
    proc = start_service(params_file, port, tmp_path / "service.log")
    shared = Shared()
    with KeyStore.from_params(params) as keys:
        made = [keys.add(f"client-{i}", "reviewer", created_by="test") for i in range(CLIENTS)]
    clients = [Client(i, port, shared, key) for i, (_, key) in enumerate(made)]
    reload: dict = {}
    try:
        start = threading.Barrier(CLIENTS + 1)
        workers = [threading.Thread(target=c.run, args=(start,)) for c in clients]
        for w in workers:
            w.start()
        start.wait()
        began = time.perf_counter()
        service_cpu, client_cpu = cpu_seconds(proc.pid), time.process_time()
        # A failed reload while the load runs: the broken version does not load.
        while shared.done < CLIENTS * REQUESTS * 0.3 and any(w.is_alive() for w in workers):
            time.sleep(0.05)
        set_champion(params, registry.broken)
        reload_start = time.perf_counter()
        reload["status"], reload["body"] = post(port, "/admin/reload")
        reload["seconds"] = round(time.perf_counter() - reload_start, 2)
        reload["done_before"] = shared.done
        reload["health"] = get(port, "/health")
        for w in workers:
            w.join()
        wall = time.perf_counter() - began
        client_cpu = time.process_time() - client_cpu
        if service_cpu is not None:
            service_cpu = cpu_seconds(proc.pid) - service_cpu
        health_after = get(port, "/health")
        stats = get(port, "/stats")[1]["batching"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()

    sent = [s for c in clients for s in c.sent]
    by_kind: dict[str, list[Sent]] = defaultdict(list)
    for s in sent:
        by_kind[s.kind].append(s)
    figures = {
        "clients": CLIENTS,
        "requests_per_client": REQUESTS,
        "serve": raw["serve"],
        "requests": len(sent),
        "wall_seconds": round(wall, 2),
        "requests_per_second": round(len(sent) / wall, 1),
        # CPU the service and the clients (this process) used during the load: on a
        # shared machine a steadier figure than requests/s.
        "service_cpu_ms_per_request": (
            round(service_cpu * 1000 / len(sent), 3) if service_cpu is not None else None
        ),
        "client_cpu_ms_per_request": round(client_cpu * 1000 / len(sent), 3),
        "all": percentiles([s.seconds for s in sent]),
        "endpoints": {
            "predict": percentiles([s.seconds for s in sent if s.kind.startswith("predict")]),
            "feedback": percentiles([s.seconds for s in sent if not s.kind.startswith("predict")]),
        },
        "kinds": {k: percentiles([s.seconds for s in v]) for k, v in sorted(by_kind.items())},
        "statuses": {
            k: dict(sorted(Counter(str(s.status) for s in v).items()))
            for k, v in sorted(by_kind.items())
        },
        "texts_predicted": sum(len(c.texts) for c in clients),
        "failed_reload": {
            "status": reload["status"],
            "seconds": reload["seconds"],
            "after_requests": reload["done_before"],
        },
        "batching": {
            k: stats[k]
            for k in ("batches", "mean_batch_requests", "max_batch_requests", "rejected")
        },
    }
    print("\nload figures:", json.dumps(figures, indent=2))
    for path in (tmp_path / "load.json", os.environ.get("SLMOPS_LOAD_REPORT")):
        if path:  # SLMOPS_LOAD_REPORT: a copy that outlives pytest's tmp folders
            Path(path).write_text(json.dumps(figures, indent=2) + "\n")

    # No connection error, no 5xx, no status other than the one each request expects.
    errors = [s for s in sent if s.status is None]
    assert not errors, [s.body for s in errors[:5]]
    unexpected = [(s.kind, s.status, s.body) for s in sent if s.status not in s.expected]
    assert not unexpected, (len(unexpected), unexpected[:5])
    assert len(sent) == CLIENTS * REQUESTS
    problems = [p for c in clients for p in c.problems]
    assert not problems, problems[:5]
    assert by_kind["bad_unknown_id"] and by_kind["bad_label"] and by_kind["bad_token"]
    assert by_kind["feedback_repeat"] and by_kind["feedback_shared"]
    assert stats["rejected"] == 0 and stats["failed_batches"] == 0
    assert stats["max_batch_requests"] > 1  # requests did share model calls

    # The failed reload: 502, the old version kept serving every request, health says so.
    assert reload["status"] == 502 and reload["body"]["version"] == registry.good[0]
    assert reload["body"]["status"] == "degraded" and reload["body"]["error"]
    status, health = reload["health"]
    assert status == 200 and health["status"] == "degraded"
    assert health["model_version"] == registry.good[0]
    assert health_after[0] == 200 and health_after[1]["status"] == "degraded"
    versions = Counter(
        p["model_version"]
        for s in sent
        if s.status == 200 and s.kind.startswith("predict")
        for p in s.body["predictions"]
    )
    assert versions == {registry.good[0]: figures["texts_predicted"]}
    assert reload["done_before"] < CLIENTS * REQUESTS  # the reload overlapped the load

    # The store, read directly: every answered prediction once, with its text; no other.
    answered = {pid: text for c in clients for pid, text in c.texts.items()}
    assert len(answered) == figures["texts_predicted"]  # no id handed out twice
    store = FeedbackStore.from_params(params)
    try:
        with store.engine.connect() as conn:
            predictions = conn.execute(
                sa.select(predictions_table.c.id, predictions_table.c.text)
            ).all()
            asked_by = dict(
                conn.execute(sa.select(predictions_table.c.id, predictions_table.c.principal)).all()
            )
            feedback = conn.execute(
                sa.select(
                    feedback_table.c.id,
                    feedback_table.c.prediction_id,
                    feedback_table.c.label,
                    feedback_table.c.user_name,
                )
            ).all()
    finally:
        store.close()
    assert len(predictions) == len(answered)
    assert dict(predictions) == answered
    # ...each credited to the principal of the key that asked (protect_reads off: a key
    # sent is still resolved, through the service's key cache).
    assert asked_by == {pid: f"client-{c.index}" for c in clients for pid in c.texts}

    # Feedback: the rows are exactly the 201 answers, with the label sent, each credited
    # to the principal of the key that sent it (client-<i>, which the body's `user` repeats).
    created = {
        (s.body["feedback_id"], s.payload["prediction_id"], s.payload["label"], s.payload["user"])
        for s in sent
        if s.status == 201
    }
    assert len(created) == sum(1 for s in sent if s.status == 201)
    assert set(map(tuple, feedback)) == created and len(feedback) == len(created)
    # Each shared pair: one 201 per client that sent it (each reviewer's agreement is a
    # vote of its own); every repeat by that client names its row.
    ids_by_vote: dict[tuple[str, str, str], set[int]] = defaultdict(set)
    created_by_vote: Counter[tuple[str, str, str]] = Counter()
    for s in by_kind["feedback_shared"]:
        vote = (s.payload["prediction_id"], s.payload["label"], s.payload["user"])
        ids_by_vote[vote].add(s.body["feedback_id"])
        created_by_vote[vote] += s.status == 201
    assert all(len(ids) == 1 for ids in ids_by_vote.values()), ids_by_vote
    assert set(created_by_vote.values()) == {1}
    assert len({v[:2] for v in created_by_vote}) < len(created_by_vote)  # pairs were shared
    # Nothing rejected was written.
    assert not any(row.label == REJECTED_LABEL or row.user_name == "rejected" for row in feedback)
    assert {row.prediction_id for row in feedback} <= set(answered)


@pytest.mark.slow
def test_store_with_32_writer_threads_and_an_ingesting_reader(tmp_path):
    """Concurrent writers on one SQLite file: nothing lost or doubled, identical feedback
    stored once, and a consumer following its watermark reads every row exactly once."""
    params = parse_params({}, tmp_path / "params.yaml", root=tmp_path)
    threads, rounds = 32, 40
    labels = TINY_LABELS
    store = FeedbackStore.from_params(params)
    shared_ids = store.log_predictions(
        [NewPrediction(f"shared {i}", labels[0], 0.5, [], "m", "1") for i in range(rounds)]
    )
    barrier = threading.Barrier(threads)
    logged: list[list[tuple[str, str]]] = [[] for _ in range(threads)]
    created: list[list[tuple[int, str, str, bool]]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    writing = threading.Event()
    writing.set()
    consumed: list[int] = []

    def write(t: int) -> None:
        try:
            rng = random.Random(t)
            for r in range(rounds):
                texts = [f"thread {t} round {r} text {k}" for k in range(rng.randint(1, 3))]
                rows = [NewPrediction(x, labels[0], 0.5, [], "m", "1") for x in texts]
                ids = store.log_predictions(rows)
                logged[t].extend(zip(ids, texts, strict=True))
                own = store.add_feedback(
                    ids[0], rng.choice(labels), labels, f"thread-{t}", task=SEQUENCE
                )
                created[t].append((own[0].id, ids[0], own[0].label, own[1]))
                barrier.wait(60)  # every thread sends the same feedback at once
                # One reviewer's request retried from 32 threads: the unique-row race.
                row, new = store.add_feedback(
                    shared_ids[r], labels[1], labels, "one-reviewer", task=SEQUENCE
                )
                created[t].append((row.id, shared_ids[r], labels[1], new))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            barrier.abort()

    def ingest() -> None:
        mark = 0
        while True:
            last_pass = not writing.is_set()
            items = store.feedback_since(mark, limit=50)
            consumed.extend(i.id for i in items)
            if items:
                mark = store.set_watermark("load", items[-1].id).last_feedback_id
            elif last_pass:
                return
            else:
                time.sleep(0.01)

    reader = threading.Thread(target=ingest)
    workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    try:
        reader.start()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        writing.clear()
        reader.join()
        assert not errors, errors[:3]
        with store.engine.connect() as conn:
            predictions = dict(
                conn.execute(sa.select(predictions_table.c.id, predictions_table.c.text)).all()
            )
            feedback = conn.execute(
                sa.select(feedback_table.c.id, feedback_table.c.prediction_id)
            ).all()
    finally:
        store.close()
    expected = {pid: text for rows in logged for pid, text in rows}
    assert len(expected) == sum(map(len, logged))
    assert predictions == {**expected, **{pid: f"shared {i}" for i, pid in enumerate(shared_ids)}}
    answers = [a for rows in created for a in rows]
    # Own feedback: one new row per round (each on a fresh prediction).
    own_pairs = {(pid, label) for _, pid, label, _ in answers if pid not in shared_ids}
    new_rows = {(fid, pid, label) for fid, pid, label, new in answers if new}
    assert len(new_rows) == sum(1 for *_, new in answers if new)
    # Shared feedback: each pair created by exactly one thread, all answers the same row.
    for r, pid in enumerate(shared_ids):
        answers_r = [a for a in answers if a[1] == pid]
        assert len(answers_r) == threads and sum(a[3] for a in answers_r) == 1, r
        assert len({a[0] for a in answers_r}) == 1
    assert len(feedback) == len(own_pairs) + rounds == len(new_rows)
    assert {fid for fid, _ in feedback} == {fid for fid, *_ in new_rows}
    # The consumer read every row exactly once, in id order.
    assert consumed == sorted(fid for fid, _ in feedback)
