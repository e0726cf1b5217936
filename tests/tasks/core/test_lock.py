"""The project lock: runs take turns, in one process or several; nesting is fine."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import Timeout

from slmops.tasks.core.config import parse_params
from slmops.tasks.core.lock import LOCK_FILE, project_lock
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
