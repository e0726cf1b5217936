"""Dataset versions through DVC: track, push, restore, read hashes.

DVC is driven through its command line (``python -m dvc``) as users drive it,
so every version made here is an ordinary DVC version.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from slmops.tasks.core.errors import DataError

log = logging.getLogger(__name__)


class DvcError(RuntimeError):
    """A DVC command failed; the message carries its output."""


def dvc(*args: str, root: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``dvc <args>`` in ``root`` with analytics off."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        out = (proc.stderr or proc.stdout).strip()
        raise DvcError(f"`dvc {' '.join(args)}` failed in {root} (exit {proc.returncode}):\n{out}")
    return proc


def track(paths: list[Path], root: Path, push: bool) -> None:
    """Record a new version of each path (``dvc add``) and push it if configured."""
    rel = [str(p.relative_to(root)) if p.is_absolute() else str(p) for p in paths]
    dvc("add", "--quiet", *rel, root=root)
    if push:
        dvc("push", "--quiet", *(f"{r}.dvc" for r in rel), root=root)
    log.info("new DVC version of %s%s", ", ".join(rel), " (pushed)" if push else "")


def restore(paths: list[Path], root: Path) -> bool:
    """Bring the versions named by the ``.dvc`` files into the workspace.

    Tries the local cache, then the default remote; False when neither has them.
    """
    targets = [f"{p.relative_to(root) if p.is_absolute() else p}.dvc" for p in paths]
    if any(not (root / t).exists() for t in targets):
        return False
    if dvc("checkout", "--quiet", *targets, root=root, check=False).returncode == 0:
        return True
    return dvc("pull", "--quiet", *targets, root=root, check=False).returncode == 0


def data_hash(path: Path) -> str:
    """The DVC hash (md5) recorded for a tracked path, e.g. ``abc123.dir``."""
    dvc_file = path.with_name(path.name + ".dvc")
    try:
        meta = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
        return str(meta["outs"][0]["md5"])
    except FileNotFoundError:
        raise DataError(f"{dvc_file}: not tracked by DVC (no .dvc file)") from None
    except (KeyError, IndexError, TypeError, yaml.YAMLError):
        raise DataError(f"{dvc_file}: not a valid .dvc file (no outs[0].md5)") from None
