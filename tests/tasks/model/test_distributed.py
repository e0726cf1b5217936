"""Data-parallel training: the batch sharing, and a real 2-process run on CPUs (gloo)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from slmops.tasks.model.distributed import Dist
from tests.conftest import REPO, run
from tests.tasks.tiny_model import make_tiny_model


def test_one_process_keeps_every_batch():
    assert Dist().share([1, 2, 3]) == [1, 2, 3]
    assert Dist().sum(1, 2.5) == (1.0, 2.5)


@pytest.mark.parametrize("n", [1, 4, 5, 7])
def test_ranks_get_equal_shares_that_cover_every_batch(n):
    batches = list(range(n))
    shares = [Dist(rank=r, world=3).share(batches) for r in range(3)]
    assert len({len(s) for s in shares}) == 1  # same number of steps on every rank
    assert sorted(set().union(*shares)) == batches
    assert sum(len(s) for s in shares) - n < 3  # padding is less than one round


SCRIPT = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from slmops.tasks.core.config import TrainConfig
from slmops.tasks.model.train import train_model
from slmops.tasks.task_types import SequenceClassification
from tests.tasks.tiny_model import TINY_LABELS, tiny_frames

out = Path({out!r})
train, val = tiny_frames()
cfg = TrainConfig(base_model={base!r}, epochs=2, batch_size=8, learning_rate=1e-2,
                  early_stopping_patience=0, device="cpu", num_threads=1)
r = train_model(train, val, TINY_LABELS, cfg, out / "model", out / "ckpt", progress=False,
                task=SequenceClassification())
rank = os.environ["RANK"]
(out / f"rank{{rank}}.json").write_text(json.dumps(
    {{"world": r.params["world_size"], "steps": r.params["steps_per_epoch"],
      "history": r.history}}))
"""


@pytest.mark.slow
def test_torchrun_trains_on_two_processes_without_code_changes(tmp_path: Path):
    base = make_tiny_model(tmp_path / "base")
    script = tmp_path / "train_ddp.py"
    script.write_text(
        textwrap.dedent(SCRIPT.format(repo=str(REPO), out=str(tmp_path), base=str(base)))
    )
    proc = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
        ],
        tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # 60 train rows, batch 8: 8 batches per epoch, 4 steps on each of the 2 ranks.
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["steps"] for r in ranks] == [4, 4]
    # Both ranks saw the same validation scores: gradients were averaged, weights agree.
    assert ranks[0]["history"][-1]["val_loss"] == pytest.approx(ranks[1]["history"][-1]["val_loss"])
    assert (tmp_path / "model" / "model.safetensors").exists()  # written once, by rank 0
    assert not (tmp_path / "ckpt").exists()  # checkpoints cleared after the run
