"""Run the benchmarks: ``python -m benchmarks [--quick] [--only NAME ...] [--list]``.

Every ``benchmarks/bench_*.py`` module is a benchmark (``NAME``, ``run(quick)``).
Each runs in a process of its own, one after another: a crash in one does not
stop the others, and their memory peaks do not mix. Each writes
``results/<name>.json`` (``results/quick/`` in quick mode); ``RESULTS.md`` is
regenerated at the end. The exit status is 1 if any benchmark failed.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (
    BENCH_DIR,
    OFFLINE_ENV,
    REPO,
    load_average,
    now_iso,
    results_dir,
    write_result,
)
from benchmarks.report import build, status

COMMAND_ENV = "SLMOPS_BENCH_COMMAND"


@dataclass(frozen=True)
class Bench:
    """A benchmark module, read without importing it (imports are heavy)."""

    name: str
    module: str
    summary: str


def discover(directory: Path = BENCH_DIR) -> list[Bench]:
    """The ``bench_*.py`` modules in ``directory``, with their ``NAME`` and first docstring line."""
    found = []
    for path in sorted(directory.glob("bench_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        name = path.stem.removeprefix("bench_")
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "NAME" for t in node.targets)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                name = node.value.value
        doc = (ast.get_docstring(tree) or "").strip().splitlines()
        found.append(Bench(name, f"benchmarks.{path.stem}", doc[0] if doc else ""))
    return found


def select(benches: Sequence[Bench], only: Sequence[str] | None) -> list[Bench]:
    """The benchmarks named in ``only`` (by ``NAME`` or module name), all when empty."""
    if not only:
        return list(benches)
    by_key = {b.name: b for b in benches} | {b.module.rsplit(".", 1)[1]: b for b in benches}
    unknown = [n for n in only if n not in by_key]
    if unknown:
        known = ", ".join(b.name for b in benches)
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)} (known: {known})")
    picked: list[Bench] = []
    for n in only:
        if by_key[n] not in picked:
            picked.append(by_key[n])
    return picked


def run_child(module: str, quick: bool) -> int:
    """In the benchmark's own process: run it and write its result (a failure record
    with the traceback when it raises)."""
    started, load_before = now_iso(), load_average()
    mod = importlib.import_module(module)
    name = getattr(mod, "NAME", module.rsplit(".", 1)[-1].removeprefix("bench_"))
    try:
        payload = dict(mod.run(quick))
    except BaseException as exc:
        write_result(
            name,
            {"error": traceback.format_exc(limit=20), "load_average_before": load_before},
            quick=quick,
            started=started,
        )
        if isinstance(exc, KeyboardInterrupt):
            raise
        traceback.print_exc()
        return 1
    payload.setdefault("load_average_before", load_before)
    path = write_result(name, payload, quick=quick, started=started)
    print(f"[bench] {name}: wrote {_shown(path)}", flush=True)
    return 0


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _result_mtime(name: str, quick: bool) -> float | None:
    from benchmarks.common import results_dir

    path = results_dir(quick) / f"{name}.json"
    return path.stat().st_mtime if path.exists() else None


def target_lines(name: str, quick: bool) -> list[str]:
    """One line per target of a benchmark's result file: what, target, measured, status."""
    path = results_dir(quick) / f"{name}.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    lines = []
    for t in record.get("targets") or []:
        state = status(t).replace("**", "")  # Markdown bold of "NOT met"
        lines.append(f"{t.get('what')}: {t.get('measured')} (target {t.get('target')}): {state}")
    return lines


def run_all(benches: Sequence[Bench], quick: bool, command: str) -> list[tuple[Bench, int, float]]:
    """Run each benchmark in a child process; returns (bench, exit status, seconds)."""
    env = {**os.environ, **OFFLINE_ENV, COMMAND_ENV: command}
    outcomes = []
    for i, bench in enumerate(benches, 1):
        print(f"[bench] ({i}/{len(benches)}) {bench.name}: started", flush=True)
        before = _result_mtime(bench.name, quick)
        start = time.perf_counter()
        argv = [sys.executable, "-m", "benchmarks", "--child", bench.module]
        rc = subprocess.call([*argv, *(["--quick"] if quick else [])], cwd=REPO, env=env)
        seconds = time.perf_counter() - start
        if rc != 0 and _result_mtime(bench.name, quick) == before:
            # Killed before it could record its failure (a signal, out of memory).
            write_result(
                bench.name,
                {"error": f"the benchmark process exited with status {rc} and wrote nothing"},
                quick=quick,
                command=command,
            )
        state = "ok" if rc == 0 else f"FAILED (exit status {rc})"
        print(f"[bench] ({i}/{len(benches)}) {bench.name}: {state} in {seconds:.0f} s", flush=True)
        for line in target_lines(bench.name, quick):
            print(f"[bench]   {line}", flush=True)
        outcomes.append((bench, rc, seconds))
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; see the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small subsets, few repetitions")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--child", metavar="MODULE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
        return run_child(args.child, args.quick)

    benches = discover()
    if args.list:
        for b in benches:
            print(f"{b.name:<12} {b.module:<28} {b.summary}")
        return 0
    selected = select(benches, args.only)
    command = os.environ.get(COMMAND_ENV) or " ".join(["python -m benchmarks", *argv])
    started = time.perf_counter()
    outcomes = run_all(selected, args.quick, command)
    page = build(args.quick)
    failed = [b.name for b, rc, _ in outcomes if rc != 0]
    total = time.perf_counter() - started
    print(
        f"[bench] {len(outcomes)} benchmark(s) in {total:.0f} s; results: {page.relative_to(REPO)}"
    )
    if failed:
        print(f"[bench] FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
