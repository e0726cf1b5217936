"""The project lock: runs take turns, in one process or several, and on several machines
that share a Postgres feedback store; nesting is fine."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import Timeout

from slmops.tasks.core.config import parse_params
from slmops.tasks.core.lock import (
    LOCK_FILE,
    AdvisoryLockTimeout,
    advisory_key,
    project_lock,
    uses_postgres,
)
from tests.conftest import REPO


@pytest.fixture
def params(tmp_path: Path):
    return parse_params({}, tmp_path / "params.yaml", root=tmp_path)


def test_a_locked_step_may_call_another(params):
    with project_lock(params, "outer"), project_lock(params, "inner"):
        assert (params.root / LOCK_FILE).exists()


def test_two_threads_take_turns(params):
    inside, overlaps = [], []

    def work(name: str) -> None:
        for _ in range(5):
            with project_lock(params, name):
                inside.append(name)
                if len(inside) > 1:
                    overlaps.append(tuple(inside))
                time.sleep(0.005)
                inside.remove(name)

    threads = [threading.Thread(target=work, args=(f"run-{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps


HOLD = """
import sys, time
from pathlib import Path
from slmops.tasks.core.config import parse_params
from slmops.tasks.core.lock import project_lock
params = parse_params({}, Path(sys.argv[1]) / "params.yaml", root=Path(sys.argv[1]))
with project_lock(params, "holder"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    print(time.time(), flush=True)  # the moment it lets go
"""


def test_another_process_waits_for_the_lock(params, caplog):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(params.root), "1.5"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Timeout), project_lock(params, "impatient", timeout=0.2):
            pass
        with (
            caplog.at_level("INFO", logger="slmops.tasks.core.lock"),
            project_lock(params, "patient"),
        ):
            got = time.time()
        released = float(holder.stdout.readline())
        assert got >= released  # got it only once the holder let go
        assert "patient: waiting for another run" in caplog.text
    finally:
        holder.kill()
        holder.wait()


def test_the_outermost_hold_is_logged_once(params, caplog):
    with (
        caplog.at_level("INFO", logger="slmops.tasks.core.lock"),
        project_lock(params, "outer"),
        project_lock(params, "inner"),
    ):
        pass
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "outer: holding the project lock"
    assert lines[1].startswith("outer: released the project lock (held ")
    assert len(lines) == 2  # the inner one is part of the outer hold


def test_the_advisory_key_is_the_projects_and_only_postgres_uses_it(tmp_path):
    def of(**sections):
        return parse_params(sections, tmp_path / "params.yaml", root=tmp_path)

    a, b = of(registry={"model_name": "intent"}), of(registry={"model_name": "ner"})
    assert advisory_key(a) == advisory_key(of(registry={"model_name": "intent"}))
    assert advisory_key(a) != advisory_key(b)
    assert -(2**63) <= advisory_key(a) < 2**63  # a Postgres bigint
    assert not uses_postgres(a)  # the default SQLite store: the file lock alone
    assert uses_postgres(of(feedback={"db_url": "postgresql+psycopg://u@db/feedback"}))


# ------------------------------------------------------------------ Postgres


PG_HOLD = """
import sys, time
from pathlib import Path
from slmops.tasks.core.config import parse_params
from slmops.tasks.core.lock import project_lock
root = Path(sys.argv[1])
params = parse_params({"feedback": {"db_url": sys.argv[2]}}, root / "params.yaml", root=root)
with project_lock(params, "machine A"):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
    print(time.time(), flush=True)  # the moment it lets go
"""


def _machine(tmp_path: Path, name: str, url: str):
    root = tmp_path / name  # another checkout: another lock file, the same database
    root.mkdir()
    return parse_params({"feedback": {"db_url": url}}, root / "params.yaml", root=root)


def _hold(root: Path, url: str, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", PG_HOLD, str(root), url, str(seconds)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_two_machines_sharing_the_postgres_store_take_turns(postgres_url, tmp_path, caplog):
    a = _machine(tmp_path, "a", postgres_url)
    b = _machine(tmp_path, "b", postgres_url)
    holder = _hold(a.root, postgres_url, 1.5)
    try:
        # Machine B's file lock is free (its own checkout): only Postgres can hold it back.
        with (
            pytest.raises(AdvisoryLockTimeout, match=r"was not acquired in 0\.3 s"),
            project_lock(b, "impatient", timeout=0.3),
        ):
            pass
        with (
            caplog.at_level("INFO", logger="slmops.tasks.core.lock"),
            project_lock(b, "patient"),
        ):
            got = time.time()
        released = float(holder.stdout.readline())
        assert got >= released  # got it only once machine A let go
        assert "patient: waiting for another run to finish with the data (Postgres" in caplog.text
        assert (b.root / LOCK_FILE).exists()  # and the file lock too
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_the_postgres_lock_free(postgres_url, tmp_path):
    a = _machine(tmp_path, "a", postgres_url)
    b = _machine(tmp_path, "b", postgres_url)
    holder = _hold(a.root, postgres_url, 600)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with project_lock(b, "next", timeout=10):  # Postgres ended the dead session's lock
        pass
