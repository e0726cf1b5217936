"""infra/postgres.sh: a throwaway PostgreSQL cluster started, reached, stopped and
removed; and infra/services.sh with SLMOPS_DB=postgres: MLflow and the Prefect server
keep their state in that cluster, which `stop` stops because `start` started it."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from slmops.serving.background import free_port
from tests.conftest import postgres
from tests.infra.conftest import FOREIGN, environ_of, plain, services

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def pg_env() -> Iterator[dict[str, str]]:
    """The environment for infra/postgres.sh with a run folder under /tmp (the user the
    cluster runs as under root must reach it); the cluster is stopped at the end."""
    folder = tempfile.mkdtemp(prefix="slmops-pg-test-")
    env = {**os.environ, "SLMOPS_PG_DIR": folder, "SLMOPS_PG_THROWAWAY": "1"}
    env.pop("SLMOPS_PG_PORT", None)
    if postgres("install", env=env).returncode != 0:
        shutil.rmtree(folder)
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    try:
        yield env
    finally:
        postgres("stop", "--remove", env=env)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_script_starts_a_cluster_that_answers_and_stops_and_removes_it(pg_env):
    folder = Path(pg_env["SLMOPS_PG_DIR"])
    assert postgres("url", env=pg_env).returncode == 1  # not started yet: says so
    started = postgres("start", env=pg_env)
    assert started.returncode == 0, started.stdout + started.stderr
    again = postgres("start", env=pg_env)  # idempotent
    assert again.returncode == 0 and "already running" in again.stdout, again.stderr
    url = postgres("url", env=pg_env).stdout.strip()
    port = (folder / "port").read_text().strip()
    assert url == f"postgresql+psycopg://slmops@127.0.0.1:{port}/postgres"
    with psycopg.connect(plain(url)) as db:
        assert db.execute("SELECT 1").fetchone() == (1,)
        assert db.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert db.execute("SHOW server_encoding").fetchone() == ("UTF8",)
        assert db.execute("SHOW fsync").fetchone() == ("off",)  # SLMOPS_PG_THROWAWAY=1
        if os.geteuid() == 0:  # Postgres never runs as root
            assert (folder / "data").stat().st_uid != 0
    assert postgres("status", env=pg_env).returncode == 0
    stopped = postgres("stop", env=pg_env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
    assert postgres("status", env=pg_env).returncode == 3
    assert postgres("stop", env=pg_env).returncode == 0  # idempotent
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(plain(url), connect_timeout=3)
    assert (folder / "data" / "PG_VERSION").exists()  # kept without --remove
    removed = postgres("stop", "--remove", env=pg_env)
    assert removed.returncode == 0, removed.stderr
    assert not folder.exists()


def test_services_on_postgres_keep_mlflow_and_prefect_state_in_the_cluster(pg_env, tmp_path):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in pg_env.items() if k not in FOREIGN}
    env.update(
        SLMOPS_DB="postgres",
        SLMOPS_RUN_DIR=str(run_dir),
        SLMOPS_BIN=str(Path(sys.executable).parent),
        SLMOPS_WORK_POOL="slmops-pg-test",
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_PORT=str(free_port()),
        MLFLOW_PORT=str(free_port()),
        MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"),
    )
    try:
        started = services("start", env, timeout=400)
        assert started.returncode == 0, started.stdout + started.stderr
        url = postgres("url", env=env).stdout.strip()
        base = plain(url).removesuffix("/postgres")
        assert f"feedback.db_url: {url.removesuffix('/postgres')}/feedback" in started.stdout
        # Each server's own setting, read from its environment.
        prefect_url = environ_of(run_dir / "prefect-server.pid")[
            "PREFECT_SERVER_DATABASE_CONNECTION_URL"
        ]
        assert prefect_url == f"{url.removesuffix('/postgres')}/prefect".replace(
            "+psycopg", "+asyncpg"
        )
        mlflow_url = environ_of(run_dir / "mlflow-server.pid")["MLFLOW_BACKEND_STORE_URI"]
        assert mlflow_url == f"{url.removesuffix('/postgres')}/mlflow"
        # Their tables are in the cluster: each server made its schema there.
        with psycopg.connect(f"{base}/prefect") as db:
            tables = {r[0] for r in db.execute("SELECT tablename FROM pg_tables")}
            assert {"flow_run", "work_pool", "worker"} <= tables
            pools = db.execute("SELECT name FROM work_pool").fetchall()
            assert ("slmops-pg-test",) in pools  # the worker's pool, made through the API
        with psycopg.connect(f"{base}/mlflow") as db:
            tables = {r[0] for r in db.execute("SELECT tablename FROM pg_tables")}
            assert {"experiments", "runs", "registered_models"} <= tables
    finally:
        stopped = services("stop", env, timeout=120)
        print(stopped.stdout, stopped.stderr, file=sys.stderr)
    assert stopped.returncode == 0
    # `start` started the cluster, so `stop` stopped it.
    assert postgres("status", env=pg_env).returncode == 3
