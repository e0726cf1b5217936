"""Throwaway projects for the benchmarks: the shipped project in a temporary folder.

A benchmark that trains, registers or ingests must not touch the checkout's
registry, data versions or Prefect database, and must not share a Prefect
ephemeral database with another process (two processes on one SQLite file
hit ``database is locked``). So each gets its own copy:

- :func:`make_project` copies the working tree's files (git-tracked, and
  untracked ones git does not ignore), makes the copy a git +
  DVC repository with a remote inside it, and builds ``data/labeled`` and
  ``data/test`` from the seed (``slmops data init``: the committed hashes);
- :func:`bench_env` is the environment for commands run in it: its own
  ``PREFECT_HOME`` (an ephemeral Prefect API of its own), its own MLflow
  store (``params.yaml``'s relative sqlite path; ``MLFLOW_TRACKING_URI``
  removed), no telemetry, no hub downloads, a git identity;
- :func:`ensure_champion` and :func:`serve` give a project whose registry has
  a ``champion`` and a running prediction service on a free loopback port.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from slmops.serving.background import free_port

REPO = Path(__file__).resolve().parents[1]

# Commits made in the throwaway project (data versions, feedback ingestion) need an identity.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "slmops-bench",
    "GIT_AUTHOR_EMAIL": "bench@slmops.invalid",
    "GIT_COMMITTER_NAME": "slmops-bench",
    "GIT_COMMITTER_EMAIL": "bench@slmops.invalid",
}

# Nothing reaches for the network, whatever the caller's environment says (docs/architecture.md).
NO_TELEMETRY = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "DO_NOT_TRACK": "true",  # MLflow reads only "true"
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}

# Variables that would point a throwaway project at the user's stores or servers.
DROPPED = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_PROFILE", "SLMOPS_PARAMS")


def bench_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment for commands run in the throwaway project at ``root``."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    bindir = str(Path(sys.executable).parent)
    env.update(NO_TELEMETRY)
    env.update(GIT_IDENTITY)
    env.update(
        {
            # An ephemeral Prefect API and database of this project's own.
            "PREFECT_HOME": str(root / ".prefect"),
            # The shared 2-core machine can be slow to start the ephemeral server.
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
            # The environment's tools (slmops, dvc) first; `python -m benchmarks...` importable.
            "PATH": bindir + os.pathsep + env.get("PATH", ""),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
        }
    )
    env.update(extra)
    return env


def run_cmd(
    cmd: Sequence[str], root: Path, env: dict[str, str], *, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run a command in ``root``; with ``check``, fail with its output when it fails."""
    proc = subprocess.run(
        list(cmd), cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed in {root} (exit {proc.returncode}):\n"
            f"{(proc.stderr or proc.stdout)[-4000:]}"
        )
    return proc


def python(*args: str) -> list[str]:
    """``python <args>`` with this environment's interpreter."""
    return [sys.executable, *args]


def make_project(root: Path) -> Path:
    """The project's working tree at ``root``, with data built from the seed.

    ``root`` must not exist or be empty. The copy is a git repository with one
    commit and a DVC repository whose default remote (``../.dvc-remote``
    relative to ``.dvc/``, as shipped) lies inside ``root``.
    """
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise ValueError(f"{root}: not empty")
    # Tracked files and untracked ones git does not ignore: the working tree's source,
    # new modules included, without caches, stores, models or the checkout's data.
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if not src.is_file():
            continue  # deleted in the working tree
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    env = bench_env(root)
    run_cmd(["git", "init", "-q"], root, env)
    # Restores from the (empty) cache and remote fail, so this builds from the seed and
    # `dvc add`s the result: the hashes committed in the shipped .dvc files.
    run_cmd(python("-m", "slmops", "data", "init"), root, env)
    run_cmd(["git", "add", "-A"], root, env)
    run_cmd(["git", "commit", "-qm", "benchmark project"], root, env)
    return root


def registry_state(root: Path, env: dict[str, str]) -> dict[str, object]:
    """The registry's latest version and champion of the project's model (None if absent)."""
    code = (
        "import json\n"
        "from mlflow import MlflowClient\n"
        "from slmops.tasks.core.config import load_params\n"
        "from slmops.tasks.registry.tracking import configure\n"
        "p = load_params('params.yaml'); configure(p); c = MlflowClient()\n"
        "name = p.registry.model_name\n"
        "vs = [int(v.version) for v in c.search_model_versions(f\"name='{name}'\")]\n"
        "try:\n"
        "    champ = c.get_model_version_by_alias(name, 'champion').version\n"
        "except Exception:\n"
        "    champ = None\n"
        "print(json.dumps({'latest': max(vs) if vs else None, 'champion': champ}))\n"
    )
    proc = run_cmd(python("-c", code), root, env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ensure_champion(root: Path, env: dict[str, str]) -> str:
    """The champion version; when there is none, the latest version is force-promoted."""
    state = registry_state(root, env)
    if state["champion"] is not None:
        return str(state["champion"])
    if state["latest"] is None:
        raise RuntimeError(f"{root}: no registered model version to promote")
    version = str(state["latest"])
    run_cmd(
        python("-m", "slmops", "promote", "--version", version, "--force", "--reason", "benchmark"),
        root,
        env,
    )
    return version


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until ``GET url`` answers 200; fail early when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet, or 503 while the model loads
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f} s")


@contextmanager
def serve(
    root: Path, env: dict[str, str], *, port: int | None = None, timeout: float = 300
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m slmops.serving`` in ``root`` on a free loopback port, ready (champion loaded).

    Yields the process and its base URL; stops it (SIGINT, then SIGKILL) after.
    The service's log goes to ``root/serve.log``.
    """
    port = port or free_port()
    log = (root / "serve.log").open("ab")
    proc = subprocess.Popen(
        python("-m", "slmops.serving", "--host", "127.0.0.1", "--port", str(port)),
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{base}/health", proc, timeout)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
