"""Build ``RESULTS.md`` from the result files: ``python -m benchmarks.report [--quick]``.

For each ``<results>/<name>.json`` (see :func:`benchmarks.common.write_result`):
the command and when it ran, its notes, a table per entry of ``results``, and
its targets with the measured figure and met / NOT met / not measured. A
summary of every target comes first, so an unmet one cannot hide.

How ``results`` entries become tables:

- a list of dicts: one row per dict (columns: the union of their keys);
- a dict of dicts: one row per key (first column: the key);
- a dict of plain values: a two-column table (what, value);
- plain values at the top level: gathered into one two-column table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH_DIR, results_dir

HEADER = "Benchmark results"
STATUS = {True: "met", False: "**NOT met**", None: "not measured"}
REPORTED = "reported"  # a figure without a pass/fail goal (e.g. peak memory), or not judged


def status(t: dict[str, Any]) -> str:
    """A target's status column: met / NOT met, else reported (a figure) or not measured."""
    met = t.get("met")
    if met is None and t.get("measured") is not None:
        return REPORTED
    return STATUS.get(met, str(met))


# Machine fields that, when they differ from the first result's, are shown for a benchmark.
MACHINE_KEYS = ("cpu", "cores", "gpu", "torch_threads", "ram_gib")


def fmt(value: Any) -> str:
    """A table cell: numbers with about four significant figures, lists joined, no pipes."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        magnitude = abs(value)
        if magnitude >= 10_000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.1f}"
        if magnitude >= 1:
            return f"{value:.3g}" if magnitude < 10 else f"{value:.1f}"
        if magnitude == 0:
            return "0"
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(fmt(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines.extend("| " + " | ".join(fmt(c) for c in row) + " |" for row in rows)
    return lines


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, dict | list) or (
        isinstance(value, list) and not any(isinstance(v, dict | list) for v in value)
    )


def results_tables(results: Any) -> list[str]:
    """The Markdown for a benchmark's ``results`` (see the module docstring)."""
    if not isinstance(results, dict):
        return table(["result"], [[results]]) if results is not None else []
    lines: list[str] = []
    scalars = [(k, v) for k, v in results.items() if _is_scalar(v)]
    if scalars:
        lines += [*table(["what", "value"], scalars), ""]
    for key, value in results.items():
        if _is_scalar(value):
            continue
        lines += [f"**{key}**", ""]
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            columns: list[str] = []
            for row in value:
                columns += [c for c in row if c not in columns]
            lines += table(columns, [[row.get(c) for c in columns] for row in value])
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            columns = []
            for row in value.values():
                columns += [c for c in row if c not in columns]
            lines += table(
                ["", *columns], [[k, *(v.get(c) for c in columns)] for k, v in value.items()]
            )
        elif isinstance(value, dict):
            lines += table(["what", "value"], list(value.items()))
        else:
            lines += table([key], [[v] for v in value])
        lines.append("")
    return lines


def machine_lines(m: dict[str, Any]) -> list[str]:
    """The machine description as a two-column table."""
    libs = m.get("libraries") or {}
    rows = [
        ["CPU", m.get("cpu")],
        ["CPU flags (of those that pick kernels)", m.get("cpu_flags") or "none of them"],
        ["torch CPU capability", m.get("torch_cpu_capability")],
        ["cores (os.cpu_count)", m.get("cores")],
        ["torch threads", m.get("torch_threads")],
        ["RAM (GiB)", m.get("ram_gib")],
        ["GPU", m.get("gpu") or "none"],
        ["OS", m.get("os")],
        ["Python", m.get("python")],
        *[[name, version or "not installed"] for name, version in libs.items()],
    ]
    return table(["", ""], rows)


def load(quick: bool = False, directory: Path | None = None) -> list[dict[str, Any]]:
    """Every result file in the results folder, by name."""
    folder = Path(directory) if directory is not None else results_dir(quick)
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            records.append({"name": path.stem, "error": f"unreadable result file: {exc}"})
    return records


def render(records: Sequence[dict[str, Any]], *, quick: bool = False) -> str:
    """The whole of RESULTS.md for ``records``."""
    lines = [f"# {HEADER}{' (quick mode)' if quick else ''}", ""]
    lines += [
        "Generated by `python -m benchmarks.report` from "
        f"`benchmarks/{'results/quick' if quick else 'results'}/*.json`; do not edit by hand. "
        "Every comparison ran its sides interleaved in one run; figures are medians "
        "unless a column says otherwise.",
        "",
    ]
    if quick:
        lines += [
            "**Quick mode**: subsets and few repetitions, to check that everything runs; "
            "not the figures to quote.",
            "",
        ]
    if not records:
        return "\n".join([*lines, "No results yet: run `make bench`.", ""])

    first_machine = next((r["machine"] for r in records if r.get("machine")), None)
    if first_machine:
        lines += ["## Machine", "", *machine_lines(first_machine), ""]

    # ---- every target in one place
    rows = []
    for rec in records:
        if rec.get("error"):
            rows.append([rec["name"], "the benchmark itself", "runs", "failed", "**FAILED**", ""])
        for t in rec.get("targets") or []:
            rows.append(
                [
                    rec["name"],
                    t.get("what"),
                    t.get("target"),
                    t.get("measured"),
                    status(t),
                    t.get("note", ""),
                ]
            )
    labels = [*STATUS.values(), REPORTED]
    counts = {label: sum(1 for row in rows if row[4] == label) for label in labels}
    failed = sum(1 for row in rows if row[4] == "**FAILED**")
    summary = (
        f"{counts[STATUS[True]]} met, {counts[STATUS[False]]} not met, "
        f"{counts[REPORTED]} reported without a goal, {counts[STATUS[None]]} not measured"
    )
    if failed:
        summary += f"; {failed} benchmark(s) failed"
    lines += ["## Targets", "", summary + ".", ""]
    if rows:
        lines += [*table(["benchmark", "what", "target", "measured", "status", "note"], rows), ""]

    # ---- each benchmark
    for rec in records:
        lines += [f"## {rec['name']}", ""]
        meta = [f"Command: `{rec.get('command', '?')}`"]
        if rec.get("started"):
            meta.append(f"run {rec['started']} → {rec.get('finished', '?')}")
        meta.append("quick mode" if rec.get("quick") else "full mode")
        load_avg = rec.get("load_average_before") or rec.get("load_average_after")
        if load_avg:
            meta.append(f"load average {fmt(load_avg)} (1/5/15 min)")
        lines += ["; ".join(meta) + ".", ""]
        m = rec.get("machine") or {}
        if first_machine and m and any(m.get(k) != first_machine.get(k) for k in MACHINE_KEYS):
            lines += [
                "Measured on another machine: "
                + ", ".join(f"{k} {fmt(m.get(k))}" for k in MACHINE_KEYS)
                + ".",
                "",
            ]
        if rec.get("error"):
            lines += ["**FAILED**:", "", "```", str(rec["error"]).rstrip(), "```", ""]
        for note in rec.get("notes") or []:
            lines.append(f"- {note}")
        if rec.get("notes"):
            lines.append("")
        lines += plot_lines(rec, quick)
        if rec.get("settings"):
            lines += ["**settings**", "", *table(["", ""], list(rec["settings"].items())), ""]
        lines += results_tables(rec.get("results"))
        if rec.get("targets"):
            lines += ["**targets**", ""]
            lines += table(
                ["what", "target", "measured", "status", "note"],
                [
                    [t.get("what"), t.get("target"), t.get("measured"),
                     status(t), t.get("note", "")]
                    for t in rec["targets"]
                ],
            )  # fmt: skip
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def plot_lines(rec: dict[str, Any], quick: bool) -> list[str]:
    """Links to a result's plots: ``plots`` maps a caption to a PNG's name in the
    results folder; each is shown as an image, relative to the page."""
    plots = rec.get("plots") or {}
    if not plots:
        return []
    folder = os.path.relpath(results_dir(quick), output_path(quick).parent)
    lines = []
    for caption, name in plots.items():
        href = name if folder == "." else f"{folder}/{name}"
        lines += [f"![{caption}]({href})", ""]
    return lines


def output_path(quick: bool) -> Path:
    """``benchmarks/RESULTS.md`` for full runs, ``results/quick/RESULTS.md`` for quick ones."""
    return results_dir(True) / "RESULTS.md" if quick else BENCH_DIR / "RESULTS.md"


def build(quick: bool = False) -> Path:
    """Regenerate the results page from the result files; returns its path."""
    out = output_path(quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(load(quick), quick=quick), encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m benchmarks.report [--quick]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the quick-mode results")
    args = parser.parse_args(argv)
    print(build(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
