"""``slmops``: the command line of the pipeline. Each command calls a step in ``tasks/``."""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import click
import typer
from rich import box
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from slmops.offline import apply_offline_defaults

# Set before the libraries below read them.
apply_offline_defaults()
# Prefect gives its ephemeral API server 20 s to start; on a busy 2-core machine
# that is not enough and the flow fails before it begins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

# Cheap to import (no pandas, torch or Prefect). The commands' own steps are imported
# inside each command, so that `slmops --help` starts in a fraction of a second.
from slmops.tasks.core.config import ConfigError, Params, load_params  # noqa: E402
from slmops.tasks.core.errors import DataError, PromotionError  # noqa: E402
from slmops.tasks.data.versioning import DvcError  # noqa: E402

try:
    # Newer typer ships its own copy of click: its usage errors are not click's classes,
    # and main() must catch both to print a usage message instead of a traceback.
    from typer._click.exceptions import ClickException as _VendoredClickException
except ImportError:  # an older typer raises click's own exceptions
    _VendoredClickException = click.ClickException

app = typer.Typer(
    name="slmops",
    help=(
        "SLMOps: validate, label, fine-tune, evaluate, register, promote and serve a small "
        "language model, and learn again from user feedback.\n\n"
        "Every command reads params.yaml (--params, before or after the command, to choose "
        "another)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="The labeled dataset and the frozen test split.", no_args_is_help=True)
app.add_typer(data_app, name="data")
feedback_app = typer.Typer(
    help="The feedback store: what the service recorded and reviewers said.", no_args_is_help=True
)
app.add_typer(feedback_app, name="feedback")
keys_app = typer.Typer(
    help="API keys of the prediction service: one per principal (a person, a team, an "
    "application), each with a role. client: /predict and the other reads (when "
    "serve.protect_reads is on); reviewer: also /feedback and /review; admin: also "
    "/admin/reload. Stored as salted hashes in the feedback database (feedback.db_url).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
db_app = typer.Typer(
    help="The feedback database's schema (Alembic migrations; feedback.db_url).",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
review_app = typer.Typer(
    help="The review loop with a live Label Studio server (params.yaml label_studio: url, "
    "token_env): push the review queue as tasks, pull the finished annotations back as "
    "labels. infra/label-studio.sh runs one on this machine.",
    no_args_is_help=True,
)
app.add_typer(review_app, name="review")

out = Console()
err = Console(stderr=True)

DEFAULT_PARAMS = Path("params.yaml")


def _params_before_the_command(ctx: typer.Context, value: Path | None) -> Path:
    """A command's ``--params``: its own when given, else the one before the command."""
    return value if value is not None else ctx.find_root().params["params"]


# Every command's --params. The callback fills it in, so a command's body always sees
# a Path: `slmops --params X cmd` and `slmops cmd --params X` both work, and the one
# after the command wins.
ParamsOpt = Annotated[
    Path | None,
    typer.Option(
        "--params",
        "-p",
        help="Params file (default: the --params before the command, or $SLMOPS_PARAMS, "
        "or params.yaml).",
        callback=_params_before_the_command,
        show_default=False,
    ),
]


@app.callback()
def _setup(
    params: Annotated[
        Path,
        typer.Option(
            "--params",
            "-p",
            help="Params file for the command (a --params after the command wins).",
            envvar="SLMOPS_PARAMS",
        ),
    ] = DEFAULT_PARAMS,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    # `params` is read by each command's --params callback (the root context keeps it).
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, show_time=False)],
    )
    for noisy in ("great_expectations", "filelock", "urllib3", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _params(path: Path) -> Params:
    return load_params(path)


def _fail(message: str, code: int = 1) -> typer.Exit:
    # Escaped: an error message may hold brackets ("[Errno 2]", a list) that rich
    # would read as markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _run_flow(flow, **parameters):
    """Run a Prefect flow; its result, or exit 1 printing the run's state message
    (which step failed and why: ``flows/steps.py``)."""
    try:
        state = flow(**parameters, return_state=True)
    except Exception as exc:  # the run never got going (the Prefect API, bad parameters)
        raise _fail(f"flow {flow.name} failed: {exc}") from None
    if not state.is_completed():
        raise _fail(f"flow {flow.name} {state.name.lower()}: {state.message}")
    return state.result()


def _print_result(result, out_dir: Path) -> None:
    table = Table(title=f"{result.dataset}: {result.rows} rows", title_justify="left")
    for col in ("check", "severity", "result", "rows", "detail"):
        table.add_column(col, overflow="fold")
    for c in result.checks:
        status = (
            "[green]pass[/]" if c.success else ("[red]FAIL[/]" if c.blocking else "[yellow]warn[/]")
        )
        table.add_row(c.check, str(c.severity), status, str(c.unexpected_count or ""), c.message)
    out.print(table)
    verdict = "[green]PASSED[/]" if result.passed else "[red]FAILED[/]"
    out.print(
        f"{verdict}  report: {out_dir / 'report.json'}  data docs: "
        f"{out_dir / 'data_docs' / 'index.html'}"
    )
    if len(result.quarantined):
        where = out_dir / "quarantine.csv"
        out.print(f"{len(result.quarantined)} row(s) quarantined with reasons: {where}")


@app.command()
def validate(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="CSV with text,label columns. Default: the labeled data and the test split."
        ),
    ] = None,
    leakage: Annotated[
        bool, typer.Option(help="Check for texts that also appear in the frozen test split.")
    ] = True,
    report_dir: Annotated[
        Path | None, typer.Option(help="Where to write report.json, quarantine.csv, data_docs/.")
    ] = None,
    params: ParamsOpt = None,
) -> None:
    """Run the validation gate (Great Expectations) on a dataset.

    Exits 1 when a check at error severity fails; every failing row is written
    to quarantine.csv with the reason.
    """
    # deferred: pulls torch and scikit-learn; keeps --help fast
    from slmops.tasks.pipeline.prepare import run_gate, validate_file

    p = _params(params)
    results = [validate_file(path, p, leakage=leakage, out_dir=report_dir)] if path else run_gate(p)
    for result, out_dir in results:
        _print_result(result, out_dir)
    if not all(r.passed for r, _ in results):
        raise typer.Exit(1)


@app.command("import-labels")
def import_labels_cmd(
    paths: Annotated[
        list[Path], typer.Argument(help="Label Studio JSON / JSON-MIN export or CSV file(s).")
    ],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="label_studio_json | label_studio_min | csv (default: detect)."
        ),
    ] = None,
    params: ParamsOpt = None,
) -> None:
    """Import labels into the labeled data and record a new DVC version.

    Several annotators of one text vote (majority label, agreement score);
    ties and low agreement are quarantined. A new label for a text already in
    the data replaces the old one and is logged in corrections.csv.
    """
    # deferred: pulls torch and scikit-learn; keeps --help fast
    from slmops.tasks.pipeline.prepare import import_labels

    p = _params(params)
    for path in paths:
        s = import_labels(path, p, fmt=fmt)
        out.print(
            f"{s.source} ({s.fmt}): {s.votes} vote(s) → [green]{s.added} added[/], "
            f"{s.corrected} corrected, {s.unchanged} unchanged, "
            f"[yellow]{s.quarantined} quarantined[/]"
        )
        if s.new_labels:
            out.print(f"new classes: {', '.join(s.new_labels)}")
        for line in s.problems:
            out.print(f"  gate: {line}")
        if s.version:
            out.print(
                f"new dataset version {s.version}; record it with:\n"
                f"  git add {p.data.labeled_dir}.dvc && git commit -m 'labels: import {s.source}'"
            )
        elif not s.changed:
            out.print("nothing new: the dataset version is unchanged")


@data_app.command("init")
def data_init(
    rebuild: Annotated[
        bool, typer.Option(help="Rebuild from the seed even if data is present.")
    ] = False,
    params: ParamsOpt = None,
) -> None:
    """Bring the labeled data and test split into the workspace.

    Restores the version named in the .dvc files from the DVC cache or remote;
    on a fresh clone it rebuilds them from the seed (reproducing the committed hashes).
    """
    # deferred: pulls torch and scikit-learn; keeps --help fast
    from slmops.tasks.pipeline.seed import init_data

    try:
        s = init_data(_params(params), rebuild=rebuild)
    except Exception as exc:
        raise _fail(str(exc)) from None
    out.print(
        f"data {s.action}: {s.labeled_rows} labeled rows, {s.test_rows} test rows, "
        f"{s.quarantined_rows} quarantined"
    )


@app.command()
def split(params: ParamsOpt = None) -> None:
    """Write the stratified train/val split of the labeled data (dvc stage `split`)."""
    # deferred: pulls torch and scikit-learn; keeps --help fast
    from slmops.tasks.pipeline.prepare import write_splits

    s = write_splits(_params(params))
    out.print(f"{s.train_rows} train rows → {s.train_path}; {s.val_rows} val rows → {s.val_path}")


@app.command()
def prepare(params: ParamsOpt = None) -> None:
    """Run the Prefect flow `prepare-data`: import pending exports → gate → split."""
    # deferred: pulls Prefect and torch; keeps --help fast
    from slmops.flows.prepare_data import prepare_data

    result = _run_flow(prepare_data, params_path=str(params))
    out.print(
        f"prepare-data: imported {len(result['imported'])} export(s); gate passed; "
        f"split {result['train_rows']} train / {result['val_rows']} val rows"
    )
    for report in result["reports"]:
        out.print(f"  report: {report}")


ProfileOpt = Annotated[
    str | None, typer.Option("--profile", help="Apply profiles.<name> from the params file.")
]


def _params_profile(path: Path, profile: str | None) -> Params:
    return load_params(path, profile)


@app.command()
def train(profile: ProfileOpt = None, params: ParamsOpt = None) -> None:
    """Fine-tune the base model on the train split (dvc stage `train`).

    Resumes from the last epoch checkpoint when a run with the same data and
    settings was interrupted.
    """
    # deferred: pulls torch and scikit-learn; keeps --help fast
    from slmops.tasks.pipeline.challenger import train_challenger

    r = train_challenger(_params_profile(params, profile))
    best = r.history[r.best_epoch - 1]
    out.print(
        f"trained {r.epochs_run} epoch(s) on {r.train_examples} examples in {r.seconds:.0f} s "
        f"({r.device}, {r.precision}); best epoch {r.best_epoch}: "
        f"val accuracy {best['val_accuracy']:.4f}, macro-F1 {best['val_macro_f1']:.4f}"
        + (f", entity F1 {best['val_f1']:.4f}" if "val_f1" in best else "")
    )
    out.print(f"model: {r.model_dir}")


@app.command()
def evaluate(profile: ProfileOpt = None, params: ParamsOpt = None) -> None:
    """Evaluate the trained model on the frozen test split (dvc stage `evaluate`)."""
    # deferred: pulls torch and scikit-learn; keeps --help fast
    from slmops.tasks.pipeline.challenger import evaluate_challenger

    r = evaluate_challenger(_params_profile(params, profile))
    table = Table(title=f"test metrics ({r.out_dir})", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in r.metrics.items():
        table.add_row(k, f"{v}")
    out.print(table)


@app.command()
def register(
    profile: ProfileOpt = None,
    gate: Annotated[
        bool,
        typer.Option(
            "--gate",
            help="Then judge it against the champion, and export and promote it when the "
            "gate agrees, as a retrain does (the dvc stage `register`). A refusal is an "
            "outcome, not an error: exit 0.",
        ),
    ] = False,
    params: ParamsOpt = None,
) -> None:
    """Log the trained and evaluated model to MLflow and register a new version (the
    version already registered, when it is the same model); writes
    registry.record_file (dvc stage `register`)."""
    # deferred: pulls torch and scikit-learn; keeps --help fast
    from slmops.tasks.pipeline.challenger import register_challenger
    from slmops.tasks.pipeline.dvc_record import write_registration  # deferred: pandas
    from slmops.tasks.pipeline.promote import promote_version  # deferred: torch, onnx
    from slmops.tasks.registry.promotion import CHAMPION  # deferred: mlflow
    from slmops.tasks.registry.recipes import tag_experiment  # deferred: mlflow
    from slmops.tasks.registry.registration import resolve_leftovers  # deferred: mlflow
    from slmops.tasks.registry.store import Registry  # deferred: mlflow

    p = _params_profile(params, profile)
    resolve_leftovers(p)  # what a killed registration left
    r = register_challenger(p, trigger="dvc" if os.environ.get("DVC_EXP_NAME") else "cli")
    name = p.registry.model_name
    if r.reused:
        out.print(
            f"{name} version {r.version} is this model already "
            f"(run {r.run_id}): nothing new registered"
        )
    else:
        out.print(f"registered {name} version {r.version} (run {r.run_id})")
    if os.environ.get("DVC_EXP_NAME"):  # run by `dvc exp run`: the experiment's name
        tag_experiment(p, r.version, os.environ["DVC_EXP_NAME"])
    promoted, decision = False, f"not gated (slmops promote --version {r.version})"
    if gate and Registry.of(p).alias(name, CHAMPION) == r.version:
        decision = f"version {r.version} is the champion already (the same model)"
    elif gate:
        verdict, promoted = promote_version(p, r.version, action="gate")
        decision = verdict.summary
    write_registration(
        p, version=r.version, run_id=r.run_id, promoted=promoted, decision=decision, reused=r.reused
    )
    if gate:
        out.print(
            f"[green]champion is now version {r.version}[/]" if promoted else escape(decision)
        )
    else:
        out.print(f"gate it with: slmops promote --version {r.version}")


@app.command()
def promote(
    version: Annotated[str, typer.Option("--version", help="Model version to promote.")],
    force: Annotated[
        bool, typer.Option(help="Promote even when the gate refuses (recorded in the ledger).")
    ] = False,
    reason: Annotated[str, typer.Option(help="Why (recorded in the ledger).")] = "",
    params: ParamsOpt = None,
) -> None:
    """Gate a version against the champion; if it passes, export its serving formats and
    make it the champion.

    A version whose registration was interrupted is completed first when its files
    are intact; otherwise the command says why not and how to remove it.
    """
    # deferred: pulls torch and scikit-learn; keeps --help fast
    from slmops.tasks.pipeline.promote import promote_version
    from slmops.tasks.registry.registration import resolve_leftovers  # deferred: mlflow

    p = _params(params)
    resolve_leftovers(p)  # what a killed registration left
    # The gate, the export of the version's serving formats, then the alias move.
    decision, promoted = promote_version(p, version, force=force, action="manual", note=reason)
    for check in decision.checks:
        mark = "[green]pass[/]" if check["passed"] else "[red]fail[/]"
        out.print(f"  {mark} {check['rule']}: {check.get('detail', '')}")
    out.print(
        ("[green]champion is now version " + version + "[/]")
        if promoted
        else f"[red]{decision.summary}[/]"
    )
    if not promoted:
        raise typer.Exit(1)


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded in the ledger).")] = "",
    params: ParamsOpt = None,
) -> None:
    """Move the champion alias back to the previous champion (recorded in the ledger)."""
    # deferred: pulls torch and scikit-learn; keeps --help fast
    from slmops.tasks.registry.promotion import rollback as do_rollback

    entry = do_rollback(_params(params), reason=reason)
    out.print(f"champion: version {entry['champion_before']} → {entry['champion_after']}")


@app.command()
def models(
    delete: Annotated[
        str | None,
        typer.Option(
            "--delete",
            metavar="N",
            help="Remove version N, whose registration failed or never completed "
            "(a complete version is never removed).",
        ),
    ] = None,
    params: ParamsOpt = None,
) -> None:
    """Compare registered versions: test metrics, data versions, gate outcome, aliases,
    and registrations left pending or failed by a crash."""
    # deferred: pandas; keeps --help fast
    import pandas as pd

    # deferred: pulls torch and scikit-learn; keeps --help fast
    from slmops.tasks.registry.promotion import versions_table
    from slmops.tasks.registry.registration import remove_version  # deferred: mlflow

    p = _params(params)
    if delete is not None:
        remove_version(p, delete)
        out.print(f"removed {p.registry.model_name} version {delete}")
        return
    df = versions_table(p)
    if df.empty:
        out.print(f"no versions of {p.registry.model_name} registered yet")
        return
    columns = {
        "version": "version",
        "aliases": "aliases",
        "accuracy": "accuracy",
        "macro_f1": "macro-F1",
        "labeled_data": "labeled data",
        "test_data": "test data",
        "gate": "gate",
        "registration": "registration",
        "created": "created (UTC)",
    }
    table = Table(title=p.registry.model_name, title_justify="left", box=box.SIMPLE_HEAD)
    for col, header in columns.items():
        numeric = col in ("version", "accuracy", "macro_f1")
        table.add_column(header, justify="right" if numeric else "left", no_wrap=True)
    for row in df[list(columns)].itertuples(index=False):
        cells = row._asdict()
        for metric in ("accuracy", "macro_f1"):
            value = cells[metric]
            cells[metric] = "" if value is None or pd.isna(value) else f"{value:.4f}"
        cells["labeled_data"] = cells["labeled_data"][:8]
        cells["test_data"] = cells["test_data"][:8]
        table.add_row(*(str(v) for v in cells.values()))
    # Piped output gets rich's 80-column default, too narrow for this table.
    (out if out.is_terminal else Console(width=140)).print(table)
    unfinished = df.loc[df["registration"] != "complete", "version"].tolist()
    if unfinished:
        out.print(
            f"registration not complete (a crash midway): version(s) "
            f"{', '.join(map(str, unfinished))}; `slmops promote --version N` completes one "
            "whose files are intact (or says why not), `slmops models --delete N` removes it"
        )


@app.command()
def retrain(
    profile: ProfileOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Override train.epochs.")] = None,
    data_fraction: Annotated[
        float | None, typer.Option(help="Override train.data_fraction (quick runs).")
    ] = None,
    base_model: Annotated[str | None, typer.Option(help="Override train.base_model.")] = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Train even when a registered version has the same data, params and code."
        ),
    ] = False,
    params: ParamsOpt = None,
) -> None:
    """Run the Prefect flow `retrain`: labels → validate → train → evaluate → register → gate.

    Does nothing when a registered version was made from the same data, params and
    code (and says which); --force trains anyway.
    """
    # deferred: pulls Prefect and torch; keeps --help fast
    from slmops.flows.retrain import retrain as retrain_flow

    r = _run_flow(
        retrain_flow,
        params_path=str(params),
        profile=profile,
        epochs=epochs,
        data_fraction=data_fraction,
        base_model=base_model,
        trigger="cli",
        force=force,
    )
    if r.get("skipped"):
        out.print(f"{r['skipped']}: nothing trained (--force trains anyway)")
        return
    verdict = "[green]promoted to champion[/]" if r["promoted"] else "[yellow]not promoted[/]"
    m = r["metrics"]
    entity = (
        f"entity F1 {m['f1']:.4f} (P {m['precision']:.4f}, R {m['recall']:.4f}), "
        if "f1" in m
        else ""
    )
    out.print(
        f"{r['model']} version {r['version']}: {entity}accuracy {m['accuracy']:.4f}, "
        f"macro-F1 {m['macro_f1']:.4f}; {verdict}"
    )
    out.print(f"gate: {r['decision']}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port).")] = None,
    params: ParamsOpt = None,
) -> None:
    """Serve the champion over HTTP (OpenAPI docs at /docs); follows the alias when it moves.

    /feedback and /review need a reviewer key, /admin/reload an admin key (`slmops keys
    add`); the shared token of serve.token_env (SLMOPS_API_TOKEN) is an admin key.
    """
    # deferred: pulls FastAPI and torch; keeps --help fast
    from slmops.serving.app import run

    run(_params(params), host=host, port=port)


ROLES_HELP = (
    "client (/predict and the other reads, when serve.protect_reads is on), reviewer "
    "(also /feedback and /review), or admin (also /admin/reload)."
)


@keys_app.command("add")
def keys_add(
    name: Annotated[
        str,
        typer.Argument(
            help="The principal: recorded as the reviewer of its feedback and with its "
            "predictions (letters, digits, '.', '_', '@', '-'; one active key per name)."
        ),
    ],
    role: Annotated[str, typer.Option("--role", help=ROLES_HELP, show_default=False)],
    params: ParamsOpt = None,
) -> None:
    """Make an API key for NAME with a role, and print it once.

    Only a salted hash is stored: the key cannot be shown again (lost: revoke, add another).

    Clients send it as `Authorization: Bearer <key>`; a running service accepts it at once.
    """
    # deferred: pulls SQLAlchemy; keeps --help fast
    from slmops.tasks.feedback.keys import ApiKeyError, KeyStore

    with KeyStore.from_params(_params(params)) as keys:
        try:
            key, secret = keys.add(name, role, created_by=f"cli:{getpass.getuser()}")
        except ApiKeyError as exc:
            raise _fail(str(exc)) from None
    err.print(
        f"API key of {escape(key.name)!r} (role {key.role}, id {key.id}); it will not be "
        "shown again, store it now:",
        highlight=False,
    )
    # The key alone on stdout, so that `KEY=$(slmops keys add ...)` captures just it.
    out.print(secret, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(params: ParamsOpt = None) -> None:
    """List the API keys: principal, role, id, when made and by whom, when revoked.

    Never the keys or their hashes.
    """
    # deferred: pulls SQLAlchemy; keeps --help fast
    from slmops.tasks.feedback.keys import KeyStore

    with KeyStore.from_params(_params(params)) as keys:
        rows = keys.keys()
    if not rows:
        out.print("no API keys yet: `slmops keys add NAME --role reviewer` makes one")
        return
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("name", "role", "id", "created (UTC)", "created by", "revoked (UTC)"):
        table.add_column(column)
    for k in rows:
        table.add_row(
            escape(k.name),
            k.role.value,
            k.id,
            f"{k.created_at:%Y-%m-%d %H:%M}",
            escape(k.created_by or "-"),
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "-",
        )
    out.print(table)


@db_app.command("upgrade")
def db_upgrade(params: ParamsOpt = None) -> None:
    """Bring the feedback database's schema to the newest revision (creates a new one).

    A database made before migrations is recognised, brought to that release's schema and
    stamped; rows are kept. Idempotent. The service and the flows do this themselves when
    feedback.auto_migrate is true.
    """
    # deferred: pulls SQLAlchemy and Alembic; keeps --help fast
    from slmops.tasks.feedback.store import make_engine, upgrade_schema

    p = _params(params)
    engine = make_engine(p.feedback.db_url, p.root)
    try:
        before, after = upgrade_schema(engine)
    finally:
        engine.dispose()
    where = escape(engine.url.render_as_string(hide_password=True))
    if before == after:
        out.print(f"{where}: already at revision {after}")
    else:
        out.print(f"{where}: upgraded from {before or 'no revision'} to {after}")


@db_app.command("current")
def db_current(params: ParamsOpt = None) -> None:
    """Show the feedback database's schema revision and the newest this code knows."""
    # deferred: pulls SQLAlchemy and Alembic; keeps --help fast
    from slmops.tasks.feedback import migrations
    from slmops.tasks.feedback.store import make_engine  # deferred, as above

    p = _params(params)
    engine = make_engine(p.feedback.db_url, p.root)
    where = escape(engine.url.render_as_string(hide_password=True))
    file = engine.url.database if engine.dialect.name == "sqlite" else None
    if file and file != ":memory:" and not Path(file).exists():
        # Connecting would create an empty file: say what is there instead.
        engine.dispose()
        out.print(f"{where}: no database yet (`slmops db upgrade` or the service creates it)")
        return
    try:
        have = migrations.current(engine)
    finally:
        engine.dispose()
    head = migrations.head()
    state = "up to date" if have == head else "behind: run `slmops db upgrade`"
    out.print(f"revision {have or 'none'} (head {head}): {state}")


@keys_app.command("revoke")
def keys_revoke(
    name_or_id: Annotated[
        str, typer.Argument(metavar="NAME|ID", help="The principal, or the key id.")
    ],
    params: ParamsOpt = None,
) -> None:
    """Revoke the active key of a principal (or the key with that id).

    A running service refuses it within 5 seconds (its key cache).

    The principal's feedback stays: `slmops feedback revoke --reviewer NAME` withdraws it.
    """
    # deferred: pulls SQLAlchemy; keeps --help fast
    from slmops.tasks.feedback.keys import KEY_CACHE_SECONDS, ApiKeyError, KeyStore

    with KeyStore.from_params(_params(params)) as keys:
        try:
            key = keys.revoke(name_or_id)
        except ApiKeyError as exc:
            raise _fail(str(exc)) from None
    out.print(
        f"revoked the key {key.id} of {escape(key.name)!r} (role {key.role}); a running "
        f"service refuses it within {KEY_CACHE_SECONDS:g} s",
        highlight=False,
    )


@app.command("export-review")
def export_review(
    dest: Annotated[
        Path, typer.Argument(metavar="OUT", help="File to write (Label Studio JSON, or CSV).")
    ],
    fmt: Annotated[
        str, typer.Option("--format", help="label-studio (import file) or csv.")
    ] = "label-studio",
    limit: Annotated[
        int | None, typer.Option(min=1, help="At most this many (serve.review_limit).")
    ] = None,
    conflicts: Annotated[
        bool,
        typer.Option(
            "--conflicts",
            help="Export the feedback conflicts queue (texts reviewers disagree with the "
            "curated label on) instead.",
        ),
    ] = False,
    params: ParamsOpt = None,
) -> None:
    """Write the review queue (least confident predictions without feedback) for labeling.

    Import the file into Label Studio; its export comes back with
    `slmops import-labels` (or the pending folder of the retrain flow). With
    --conflicts: the texts waiting in the feedback conflicts queue, with the labels
    reviewers proposed as pre-annotations.
    """
    # deferred: pulls pandas and SQLAlchemy; keeps --help fast
    from slmops.tasks.feedback.review import export_review as write_review

    if fmt not in ("label-studio", "csv"):
        raise _fail(f"--format {fmt!r}: expected label-studio or csv")
    n = write_review(_params(params), dest, limit=limit, fmt=fmt, conflicts=conflicts)  # type: ignore[arg-type]
    what = "conflicting text(s)" if conflicts else "prediction(s)"
    out.print(f"{n} {what} to review → {dest}")


@review_app.command("push")
def review_push(
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="At most this many new tasks per queue (serve.review_limit)."),
    ] = None,
    conflicts: Annotated[
        bool,
        typer.Option(
            "--conflicts/--no-conflicts",
            help="Also send the texts of the feedback conflicts queue.",
        ),
    ] = True,
    params: ParamsOpt = None,
) -> None:
    """Send the review queue to the Label Studio project (created or updated by title).

    The least confident predictions without feedback (and the conflicting texts) become
    tasks with the model's answer as a pre-annotation (a prediction, never an
    annotation). Items already in the project are not sent again. The server is
    label_studio.url, the token is read from the variable named by label_studio.token_env.
    With label_studio.webhook_url set, the project's webhook to the prediction service
    is registered too (submitted labels then start an ingestion, which pulls them).
    """
    # deferred: pulls pandas, SQLAlchemy and the task types; keeps --help fast
    from slmops.tasks.labels.label_studio import LabelStudioError
    from slmops.tasks.pipeline.review import push  # deferred: pulls the task types too

    p = _params(params)
    try:
        r = push(p, limit=limit, conflicts=conflicts)
    except LabelStudioError as exc:
        raise _fail(str(exc)) from None
    out.print(
        f"Label Studio project {r.project_id} at {r.url} ({r.project}): "
        f"[green]{r.predictions} prediction(s)[/] and {r.conflicts} conflicting text(s) sent, "
        f"{r.already} already there"
    )
    out.print(f"label them at {r.url}/projects/{r.project_id}")
    if r.webhook is not None:
        out.print(
            f"webhook {r.webhook}: labels submitted there start an ingestion "
            f"({p.label_studio.webhook_url})"
        )


@review_app.command("pull")
def review_pull(params: ParamsOpt = None) -> None:
    """Import the finished annotations of the Label Studio project as a new data version.

    Only annotations not pulled before are imported (the saved exports in
    data.imported_dir are the record), through the label import: voting, agreement,
    quarantine and the gate, with the project and the annotators (e-mail) as provenance.
    """
    # deferred: pulls pandas, SQLAlchemy and the task types; keeps --help fast
    from slmops.tasks.labels.label_studio import LabelStudioError
    from slmops.tasks.pipeline.review import pull  # deferred: pulls the task types too

    p = _params(params)
    try:
        r = pull(p)
    except LabelStudioError as exc:
        raise _fail(str(exc)) from None
    s = r.summary
    if s is None:
        out.print(
            f"Label Studio project {r.project_id} at {r.url}: nothing new "
            f"({r.finished} finished task(s), all pulled before)"
        )
        return
    out.print(
        f"Label Studio project {r.project_id} at {r.url}: {r.new_tasks} task(s) with new "
        f"annotations → {s.source}: {s.votes} vote(s) → [green]{s.added} added[/], "
        f"{s.corrected} corrected, {s.unchanged} unchanged, [yellow]{s.quarantined} quarantined[/]"
    )
    for line in s.problems:
        out.print(f"  gate: {line}")
    if s.version:
        committed = f" (commit {r.commit})" if r.commit else ""
        out.print(f"new dataset version {s.version}{committed}")
    elif not s.changed:
        out.print("nothing new: the dataset version is unchanged")


@app.command("ingest-feedback")
def ingest_feedback(
    no_retrain: Annotated[
        bool, typer.Option("--no-retrain", help="Only report whether a retrain is due.")
    ] = False,
    limit: Annotated[int | None, typer.Option(help="At most this many feedback rows.")] = None,
    params: ParamsOpt = None,
) -> None:
    """Run the Prefect flow `ingest_feedback`: feedback → labeled data (new DVC version) → retrain
    when a threshold is crossed."""
    # deferred: pulls Prefect and torch; keeps --help fast
    from slmops.flows.ingest_feedback import ingest_feedback_flow

    r = _run_flow(
        ingest_feedback_flow, params_path=str(params), trigger_retrain=not no_retrain, limit=limit
    )
    out.print(
        f"feedback read {r['read']}: {r['added']} added, {r['corrected']} corrected, "
        f"{r['quarantined']} quarantined; watermark {r['watermark']}"
    )
    for version, m in r["live"].items():
        out.print(f"live accuracy of version {version}: {m['accuracy']:.4f} on {m['n']} rows")
    if r["version"]:
        out.print(f"data version {r['version']} (commit {r['commit'] or '-'})")
    out.print(
        f"retrain: {r['retrain_reason'] or 'not due'}"
        + (f" → {r['retrain']}" if r["retrain"] else "")
    )
    out.print(f"retention: {r['pruned_predictions']} old prediction(s) without feedback deleted")


@feedback_app.command("prune")
def feedback_prune(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be deleted.")
    ] = False,
    params: ParamsOpt = None,
) -> None:
    """Delete the predictions older than feedback.retention_days that never got feedback.

    Their texts go; predictions with feedback stay. Each ingest_feedback run does
    this too; feedback.retention_days null keeps everything.
    """
    # deferred: pulls SQLAlchemy; keeps --help fast
    from slmops.tasks.feedback.retention import apply_retention
    from slmops.tasks.feedback.store import FeedbackStore  # deferred, as above

    p = _params(params)
    with FeedbackStore.from_params(p) as store:
        r = apply_retention(p, store, dry_run=dry_run)
    if r.retention_days is None or r.cutoff is None:
        out.print("feedback.retention_days is null: predictions are kept forever, none deleted")
        return
    what = "would be deleted (dry run)" if dry_run else "deleted"
    out.print(
        f"{r.rows} prediction(s) without feedback older than {r.retention_days} day(s) "
        f"(made before {r.cutoff:%Y-%m-%d %H:%M} UTC) {what}"
    )


@feedback_app.command("revoke")
def feedback_revoke(
    reviewer: Annotated[
        str,
        typer.Option("--reviewer", help="The principal (API key name) whose feedback to withdraw."),
    ],
    since: Annotated[
        datetime | None,
        typer.Option(help="Only feedback sent at or after this time (ISO 8601; UTC if no zone)."),
    ] = None,
    reason: Annotated[
        str, typer.Option(help="Why; kept with each revoked row.")
    ] = "revoked by an operator",
    params: ParamsOpt = None,
) -> None:
    """Withdraw a reviewer's feedback (a stolen key, a careless or hostile reviewer).

    Nothing is deleted: the rows are marked revoked, never count as votes again, and
    the next ingest-feedback derives every label they shaped again as if they had
    never come (the curated label comes back, or the text leaves for the quarantine),
    recorded in corrections.csv and a new data version.
    """
    # deferred: pulls SQLAlchemy; keeps --help fast
    from slmops.tasks.feedback.store import FeedbackStore

    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    p = _params(params)
    by = f"cli:{getpass.getuser()}"
    with FeedbackStore.from_params(p) as store:
        ids = store.revoke(reviewer, by=by, reason=reason, since=since)
    if not ids:
        out.print(f"nothing to revoke: no feedback from {reviewer!r} that is not revoked already")
        return
    out.print(
        f"{len(ids)} feedback row(s) of {escape(reviewer)} revoked (ids {ids[0]}-{ids[-1]}); "
        "`slmops ingest-feedback` undoes what they changed"
    )


@feedback_app.command("conflicts")
def feedback_conflicts(
    dead_letters: Annotated[
        bool,
        typer.Option(
            "--dead-letters", help="Show the dead-letter queue (set aside for good) instead."
        ),
    ] = False,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many rows.")] = 50,
    params: ParamsOpt = None,
) -> None:
    """Feedback waiting in the conflicts queue, and why.

    A correction of a curated label waits until feedback.reviewers_to_override
    reviewers agree; corrections past a reviewer's daily cap wait for a person.
    Export them for Label Studio with `slmops export-review --conflicts`.
    """
    # deferred: pulls SQLAlchemy; keeps --help fast
    from slmops.tasks.feedback.store import FeedbackStore

    queue = "dead_letter" if dead_letters else "conflict"
    with FeedbackStore.from_params(_params(params)) as store:
        rows = store.held(queue)
    title = "dead letters" if dead_letters else "conflicts queue"
    table = Table(title=f"{title}: {len(rows)} row(s)", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("id", "reviewer", "text", "label", "model said", "why"):
        table.add_column(column, overflow="fold")
    for h in rows[:limit]:
        table.add_row(
            str(h.item.id),
            escape(h.item.user or "anonymous"),
            escape(h.item.text[:80]),
            escape(h.item.label[:60]),
            escape(h.item.predicted_label[:60]),
            escape(h.reason),
        )
    out.print(table)
    if len(rows) > limit:
        out.print(f"… {len(rows) - limit} more (--limit)")


EXIT_ALERT = 3  # `slmops monitor`: a check fired (1 is a failure, 2 a usage error)


@app.command()
def monitor(
    window_hours: Annotated[
        float | None,
        typer.Option(
            "--window-hours", min=0.001, help="Override monitoring.window_hours for this run."
        ),
    ] = None,
    no_alert: Annotated[
        bool,
        typer.Option("--no-alert", help="Write the report only: no webhook, no Prefect event."),
    ] = False,
    profile: ProfileOpt = None,
    params: ParamsOpt = None,
) -> None:
    """Run the Prefect flow `monitor`: the champion's live predictions against its
    test-set predictions.

    Checks label distribution shift, a label's share spiking, confidence drop,
    text-length drift and live accuracy on feedback (thresholds: monitoring.* in
    params.yaml); writes an HTML report (opens offline) and latest.json under
    monitoring.report_dir. When a check fires, POSTs drift_detected to the notify
    webhook and emits the Prefect event slmops.monitoring.alert.

    Exit code: 0 no check fired (or not enough live predictions to judge), 3 a check
    fired, 1 the run failed (no champion, no reference predictions, bad params).
    """
    # deferred: pulls Prefect and torch; keeps --help fast
    from slmops.flows.monitor import monitor as monitor_flow

    r = _run_flow(
        monitor_flow,
        params_path=str(params),
        profile=profile,
        window_hours=window_hours,
        alert=not no_alert,
    )
    verdict = {"alert": "[red]ALERT[/]", "ok": "[green]OK[/]", "insufficient": "[yellow]-[/]"}
    out.print(f"{r['model']} version {r['version']}: {verdict[r['status']]} {r['message']}")
    for name, check in r["checks"].items():
        value = "-" if check["value"] is None else f"{check['value']:.4g}"
        mark = {"fired": "[red]FIRED[/]", "ok": "[green]ok[/]"}.get(check["status"], "skipped")
        out.print(f"  {mark} {name}: {value}")
    out.print(f"report: {r['report']}")
    if r["fired"]:
        sent = "sent" if r["webhook_sent"] else "not sent (no URL, or event not in notify.events)"
        out.print(f"alert: webhook {sent}")
        raise typer.Exit(EXIT_ALERT)


EXAMPLE_EXPORT = Path("data/examples/label_studio_export.json")


@app.command("demo-loop")
def demo_loop(
    port: Annotated[int | None, typer.Option(help="Service port (default: a free one).")] = None,
    params: ParamsOpt = None,
) -> None:
    """The loop closing, after `slmops demo`: serve the champion, send corrections, ingest
    them as a new data version, retrain, promote or refuse, serve the champion after."""
    # deferred: pulls FastAPI and torch; keeps --help fast
    from slmops.loop_demo import run as run_loop_demo

    run_loop_demo(params, out, port=port)


@app.command()
def demo(
    profile: ProfileOpt = None,
    params: ParamsOpt = None,
) -> None:
    """The main job on the shipped data: the whole retrain loop, once.

    Brings the data into place, queues the example Label Studio export, and
    runs the Prefect flow `retrain` (import → validate → split → train →
    evaluate → register → promotion gate).
    """
    p = _params(params)
    data_init(rebuild=False, params=params)
    example = p.path(EXAMPLE_EXPORT)
    done = p.path(p.data.imported_dir) / example.name
    if example.exists() and not done.exists():
        pending = p.path(p.data.pending_dir)
        pending.mkdir(parents=True, exist_ok=True)
        shutil.copy2(example, pending / example.name)
        out.print(f"queued the example Label Studio export: {pending / example.name}")
    retrain(
        profile=profile,
        epochs=None,
        data_fraction=None,
        base_model=None,
        force=False,
        params=params,
    )
    out.print(next_steps(p, params))


def next_steps(p: Params, params: Path) -> str:
    """What to look at after `slmops demo`, with the paths of this params file's project."""

    def shown(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:  # the project is not under the working directory
            return str(path)

    option = "" if params == DEFAULT_PARAMS else f" -p {params}"
    labeled_dvc = shown(p.path(p.data.labeled_dir).with_suffix(".dvc"))
    reports = shown(p.path(p.evaluate.output_dir))
    return (
        f"\nNext: `slmops models{option}` compares the registered versions; "
        f"`git diff {labeled_dvc}` shows the new data version; "
        f"`dvc metrics show` the test metrics; reports are in {reports}/."
    )


def main() -> None:
    """Console-script entry point: known failures print one clear message, exit 1."""
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        code = app(standalone_mode=False)
    except (ConfigError, DataError, DvcError, PromotionError) as exc:
        _fail(str(exc))
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.ClickException, _VendoredClickException) as exc:
        # A usage error (missing argument, unknown option, bad value): the usage and
        # the problem, exit 2, never a traceback.
        exc.show()
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort, typer.Abort):
        err.print("interrupted")
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)
