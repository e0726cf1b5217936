import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from slmops.tasks.core.config import parse_params
from slmops.tasks.registry.store import Registry
from slmops.tasks.registry.tracking import (
    OWNER_HOST,
    OWNER_PID,
    OWNER_STARTED,
    configure,
    flatten,
    git_commit,
    owner_alive,
    start_run,
    tracking_uri,
)


def test_relative_sqlite_uri_resolves_against_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = parse_params({}, Path("params.yaml"), root=tmp_path)
    assert tracking_uri(params) == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"


def test_env_var_points_at_a_server(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    params = parse_params({}, Path("params.yaml"), root=tmp_path)
    assert tracking_uri(params) == "http://127.0.0.1:5000"


def test_flatten_nested_settings():
    assert flatten("train", {"a": 1, "b": {"c": 2}}) == {"train.a": 1, "train.b.c": 2}


def test_git_commit_outside_a_repository_is_unknown(tmp_path):
    assert git_commit(tmp_path) == "unknown"


def test_configure_keeps_each_project_in_its_own_store(tmp_path, monkeypatch):
    # Regression: mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which made
    # the next project in the same process use the first one's store, and the
    # experiment fall back to ./mlruns for its artifacts.
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = parse_params({}, Path("params.yaml"), root=tmp_path / "one")
    second = parse_params({}, Path("params.yaml"), root=tmp_path / "two")
    configure(first)
    configure(second)
    assert mlflow.get_tracking_uri() == tracking_uri(second)
    assert "two/mlflow/mlflow.db" in mlflow.get_tracking_uri()
    location = mlflow.get_experiment_by_name("slmops").artifact_location
    assert location == (tmp_path / "two" / "mlflow" / "artifacts").resolve().as_uri()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
def test_a_run_records_its_owner_and_only_a_gone_owner_counts_as_dead(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = parse_params({}, Path("params.yaml"), root=tmp_path)
    with start_run(params) as run:
        tags = Registry.of(params).run(run.id).tags
    assert (tags[OWNER_HOST], tags[OWNER_PID]) == (socket.gethostname(), str(os.getpid()))
    assert tags[OWNER_STARTED]
    assert owner_alive(tags) is True
    # The same pid with another start time: another process that was given the pid.
    assert owner_alive({**tags, OWNER_STARTED: "another-boot:1"}) is False

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
    zombie = {**tags, OWNER_PID: str(proc.pid), OWNER_STARTED: ""}
    assert owner_alive(zombie) is False
    proc.wait()
    assert owner_alive(zombie) is False  # gone

    # What cannot be checked from here is not judged.
    assert owner_alive({**tags, OWNER_HOST: "another-host"}) is None
    assert owner_alive({}) is None
