"""Shared fixtures: a tiny, self-contained project built from slices of the seed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

# Tests never reach for the network: importing the CLI sets the environment
# defaults a user's run gets (no telemetry, no hub, Prefect's startup timeout).
import slmops.cli  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "data" / "seed" / "banking77"
FIXTURES = Path(__file__).parent / "fixtures"

TINY_LABELS = [
    "card_arrival",
    "lost_or_stolen_card",
    "exchange_rate",
    "top_up_failed",
    "balance_not_updated_after_bank_transfer",
]


def write_tiny_seed(root: Path, per_class_train: int = 14, per_class_test: int = 4) -> None:
    """A 5-class slice of BANKING77 in the seed layout, with its own label set."""
    seed = root / "data" / "seed" / "banking77"
    seed.mkdir(parents=True)
    for name, n in (("train", per_class_train), ("test", per_class_test)):
        df = pd.read_csv(SEED / f"{name}.csv", dtype=str)
        df = df[df["category"].isin(TINY_LABELS)].groupby("category").head(n)
        df.to_csv(seed / f"{name}.csv", index=False)
    (seed / "categories.json").write_text(json.dumps(TINY_LABELS))


def write_params(root: Path, **overrides: dict) -> Path:
    """params.yaml with the given top-level sections overridden (others default)."""
    raw: dict = {"dvc": {"push": False}, "validation": {"min_examples_per_class": 3}}
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def build_tiny_project(root: Path) -> Path:
    """A project root with a tiny seed, built labeled data and test split (no DVC)."""
    from slmops.tasks.core.config import load_params
    from slmops.tasks.pipeline.seed import build_from_seed

    write_tiny_seed(root)
    write_params(root)
    build_from_seed(load_params(root / "params.yaml"))
    return root


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    """A project root with a tiny seed, built labeled data and test split (no DVC)."""
    return build_tiny_project(tmp_path)


@pytest.fixture
def tiny_params(tiny_project: Path):
    """Params of :func:`tiny_project`."""
    from slmops.tasks.core.config import load_params

    return load_params(tiny_project / "params.yaml")


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, returning its output; the environment's bin dir leads PATH."""
    bindir = str(Path(sys.executable).parent)
    full_env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, check=False)


# Commits made by tests (ingestion commits data/labeled.dvc) need an identity.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "slmops-tests",
    "GIT_AUTHOR_EMAIL": "tests@slmops.invalid",
    "GIT_COMMITTER_NAME": "slmops-tests",
    "GIT_COMMITTER_EMAIL": "tests@slmops.invalid",
}


@pytest.fixture
def git_identity(monkeypatch) -> None:
    """A git author and committer for the test's commits."""
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)


def dvc_project(root: Path) -> Path:
    """Turn ``root`` into a git + DVC repository with a local remote, like the real one."""
    for cmd in (
        ["git", "init", "-q"],
        [sys.executable, "-m", "dvc", "init", "-q"],
        [sys.executable, "-m", "dvc", "config", "core.analytics", "false"],
        [sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(root / ".dvc-remote")],
    ):
        proc = run(cmd, root)
        assert proc.returncode == 0, proc.stderr
    return root


def copy_fixture(name: str, dest: Path) -> Path:
    """Copy a file from tests/fixtures into ``dest`` and return its new path."""
    dest.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(FIXTURES / name, dest / Path(name).name))


def training_project(root: Path, **sections: dict) -> Path:
    """The tiny project under git + DVC (data tracked, all committed), training a tiny
    random BERT with low gate floors; ``sections`` update sections of its params.yaml."""
    from slmops.tasks.core.config import load_params
    from slmops.tasks.data.versioning import track
    from tests.tasks.tiny_model import make_tiny_model

    build_tiny_project(root)
    dvc_project(root)
    params = load_params(root / "params.yaml")
    track([params.path(params.data.labeled_dir), params.path(params.data.test_dir)], root, False)
    base = make_tiny_model(root / "tiny-base")
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["split"] = {"val_fraction": 0.25, "seed": 13}
    raw["train"] = {
        "base_model": str(base),
        "epochs": 3,
        "learning_rate": 3e-3,
        "batch_size": 8,
        "early_stopping_patience": 0,
    }
    raw["evaluate"] = {"latency_samples": 5}
    raw["gate"] = {"min_accuracy": 0.0, "min_macro_f1": 0.0, "significance": "none"}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "tiny project"]):
        proc = run(cmd, root, env=GIT_IDENTITY)
        assert proc.returncode == 0, proc.stderr
    return root


WNUT = REPO / "data" / "seed" / "wnut17"
NER_TOKEN = "ner-test-token"  # the service token of ner_project


def _head_conll(src: Path, dest: Path, sentences: int) -> None:
    """The first ``sentences`` sentences of a CoNLL file."""
    out, n = [], 0
    for line in src.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if out and out[-1] != "":
                n += 1
                out.append("")
                if n == sentences:
                    break
            continue
        out.append(line)
    dest.write_text("\n".join(out) + "\n", encoding="utf-8")


@pytest.fixture
def ner_project(tmp_path, monkeypatch, git_identity):
    """A tiny NER project under git + DVC: 120 WNUT train sentences, 40 test ones."""
    from slmops.tasks.core.config import load_params
    from slmops.tasks.data.versioning import track
    from slmops.tasks.pipeline.seed import build_from_seed
    from tests.tasks.tiny_model import make_tiny_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SLMOPS_API_TOKEN", NER_TOKEN)
    root = tmp_path
    seed = root / "data" / "seed"
    seed.mkdir(parents=True)
    _head_conll(WNUT / "train.conll", seed / "train.conll", 120)
    _head_conll(WNUT / "test.conll", seed / "test.conll", 40)
    (seed / "types.json").write_text((WNUT / "entity_types.json").read_text())
    raw = {
        "task": "token_classification",
        "data": {"seed_train": "data/seed/train.conll", "seed_test": "data/seed/test.conll"},
        "labels": {"label_set": "data/seed/types.json"},
        "validation": {"min_examples_per_class": 0, "severity": {"exact_duplicate": "off"}},
        "dvc": {"push": False},
        "split": {"val_fraction": 0.2, "seed": 13},
        "train": {
            "base_model": str(make_tiny_model(root / "tiny-base")),
            "epochs": 2,
            "learning_rate": 3e-3,
            "batch_size": 8,
            "early_stopping_patience": 0,
        },
        "evaluate": {"latency_samples": 3},
        "registry": {"model_name": "slmops-ner-test"},
        "gate": {"min_entity_f1": 0.0, "min_exact_match": 0.0, "significance": "none"},
        "export": {"measure": False},
        "serve": {"poll_seconds": 0},
        "feedback": {"git_commit": True},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    dvc_project(root)
    params = load_params(root / "params.yaml")
    build_from_seed(params)
    track([params.path(params.data.labeled_dir), params.path(params.data.test_dir)], root, False)
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "tiny ner project"]):
        proc = run(cmd, root, env=GIT_IDENTITY)
        assert proc.returncode == 0, proc.stderr
    monkeypatch.chdir(root)
    return root


POSTGRES_SH = REPO / "infra" / "postgres.sh"


def postgres(command: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``infra/postgres.sh <command> [args]`` with ``env``, its output captured."""
    return subprocess.run(
        [str(POSTGRES_SH), command, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # `install` runs apt-get
        check=False,
    )


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1 started by ``infra/postgres.sh`` (a
    free port, a temporary folder, no fsync), stopped and removed afterwards. As root,
    ``infra/postgres.sh install`` first puts Debian's server there when it is missing;
    otherwise the test is skipped when there are no server binaries."""
    # Under /tmp (not pytest's tmp_path, closed to other users): as root the cluster
    # runs as `postgres` or `nobody`, which must reach its folder.
    folder = tempfile.mkdtemp(prefix="slmops-pg-")
    env = {**os.environ, "SLMOPS_PG_DIR": folder, "SLMOPS_PG_THROWAWAY": "1"}
    env.pop("SLMOPS_PG_PORT", None)
    if os.geteuid() == 0:
        installed = postgres("install", env=env)
        assert installed.returncode == 0, installed.stdout + installed.stderr
    elif postgres("install", env=env).returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    try:
        started = postgres("start", env=env)
        assert started.returncode == 0, started.stdout + started.stderr
        url = postgres("url", env=env)
        assert url.returncode == 0, url.stdout + url.stderr
        yield url.stdout.strip()
    finally:
        postgres("stop", "--remove", env=env)
        shutil.rmtree(folder, ignore_errors=True)
