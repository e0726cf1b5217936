"""What every flow shares: steps that name themselves when they fail, and the failure hook.

Each step of a flow is a Prefect task made with :func:`step`; each flow is made
with :func:`pipeline_flow` instead of ``@flow``. When a step fails (after its
retries), the flow run ends Failed with the message
``step 'train' failed: DataError: <message>``: what the Prefect UI shows, what
``slmops`` prints, and what the flow's on_failure hook posts to the ``notify``
webhook (``tasks/core/notify.py``). A caller of the flow function still gets the
step's own exception. Credentials in URIs are masked in the message.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
import typing
from collections.abc import Callable
from typing import Any
from uuid import UUID

from prefect import Flow, Task, get_run_logger, task
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler
from prefect.states import Failed, State, get_state_exception
from prefect.utilities.hashing import file_hash

from slmops.tasks.core import notify
from slmops.tasks.core.config import ConfigError, NotifyEvent, Params, load_params, with_overrides
from slmops.tasks.core.redact import redact_text

log = logging.getLogger(__name__)

_lock = threading.Lock()
# flow run id -> (name of the step that failed, its exception); set by the step's hook.
_failed_steps: dict[UUID, tuple[str, BaseException | None]] = {}
# flow run id -> what the failure hook reports (step, error); set when the flow fails.
_failures: dict[UUID, dict[str, Any]] = {}


def _remember_failed_step(tsk: Task, task_run: Any, state: State) -> None:
    """Task on_failure hook: note which step of which flow run failed, with what."""
    if task_run.flow_run_id is None:
        return
    try:
        exc: BaseException | None = get_state_exception(state)
    except Exception:
        exc = None
    with _lock:
        _failed_steps[task_run.flow_run_id] = (tsk.name, exc)


def step(fn: Callable[..., Any] | None = None, /, *, name: str, **options: Any) -> Any:
    """A flow step: the Prefect task ``name`` running ``fn``, which names itself when it
    fails. ``step(fn, name=...)`` or ``@step(name=...)``; ``options`` go to ``task``."""

    def make(f: Callable[..., Any]) -> Task:
        hooks = [*options.get("on_failure", ()), _remember_failed_step]
        rest = {k: v for k, v in options.items() if k != "on_failure"}
        return task(f, name=name, on_failure=hooks, **rest)

    return make(fn) if fn is not None else make


def _load(
    params_path: str, profile: str | None = None, overrides: dict[str, Any] | None = None
) -> Params:
    params = load_params(params_path, profile)
    return with_overrides(params, overrides or {}, "flow parameters")


load_params_step = step(_load, name="load-params")


def _same(a: BaseException, b: BaseException | None) -> bool:
    # The step's own exception object reaches the flow; a copy (a result read
    # back from storage) still has the same type and text.
    return b is not None and (a is b or (type(a) is type(b) and str(a) == str(b)))


def _failed_step(flow_run_id: UUID, exc: BaseException) -> str | None:
    """The step of this flow run whose failure ``exc`` is (or was raised from)."""
    with _lock:
        name, step_exc = _failed_steps.pop(flow_run_id, (None, None))
    if name is None:
        return None
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if _same(cause, step_exc):
            return name
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def describe_error(exc: BaseException) -> str:
    """``Type: message``; for a failed subflow, what it reported (``retrain: step ...``)."""
    inner = getattr(exc, "slmops_failure", None)
    if inner:
        return f"{inner['flow']}: {inner['message']}"
    return f"{type(exc).__name__}: {exc}"


def failure_message(flow_name: str, step_name: str | None, exc: BaseException) -> str:
    """The state message of a failed flow run: which step, and why."""
    where = f"step {step_name!r}" if step_name else f"flow {flow_name!r} (outside its steps)"
    return redact_text(f"{where} failed: {describe_error(exc)}")


def _failed_state(flow_name: str, exc: Exception) -> State:
    context = FlowRunContext.get()
    flow_run_id = context.flow_run.id if context and context.flow_run else None
    step_name = _failed_step(flow_run_id, exc) if flow_run_id else None
    message = failure_message(flow_name, step_name, exc)
    get_run_logger().error(message, exc_info=exc)
    if flow_run_id is not None:
        with _lock:
            _failures[flow_run_id] = {"step": step_name, "error": describe_error(exc)}
    if not getattr(exc, "slmops_failure", None):
        # A parent flow running this one as a subflow reports it as is.
        with contextlib.suppress(AttributeError, TypeError):
            exc.slmops_failure = {"flow": flow_name, "message": message}  # type: ignore[attr-defined]
    return Failed(message=message, data=exc)


def _params_of(flow_run: Any) -> Params:
    parameters = flow_run.parameters or {}
    path = parameters.get("params_path") or "params.yaml"
    for profile in (parameters.get("profile"), None):
        try:
            return load_params(path, profile)
        except ConfigError:
            continue
    return Params()  # the params file is what failed: the defaults still name the URL's source


def notify_failure(flw: Flow, flow_run: Any, state: State) -> None:
    """Flow on_failure / on_crashed hook: POST ``flow_failed`` to the ``notify`` webhook.

    Never raises: Prefect logs a hook's exception, but the run's own failure is
    what must be reported.
    """
    with _lock:
        failure = _failures.pop(flow_run.id, None) or {}
    try:
        params = _params_of(flow_run)
        notify.send(
            params,
            NotifyEvent.flow_failed,
            {
                "flow": flw.name,
                "flow_run_id": str(flow_run.id),
                "flow_run_name": flow_run.name,
                "step": failure.get("step"),
                "error": redact_text(failure.get("error") or state.message or ""),
                "state": state.name,
                "message": redact_text(state.message or ""),
                "trigger": (flow_run.parameters or {}).get("trigger"),
            },
        )
    except Exception as exc:
        log.warning("failure notification not sent: %s", type(exc).__name__)


class _RunLogHandler(APILogHandler):
    """The project's own log lines (``slmops``: the steps' progress and epochs, waiting
    for the project lock, a version registered) in the flow run's log, as the Prefect UI
    and API show it; a line logged outside any run (a CLI command in the same process)
    is not sent."""

    def emit(self, record: logging.LogRecord) -> None:
        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        super().emit(record)


# Every module of the project logs under this name (``slmops.tasks.*``, ``slmops.flows.*``):
# the packages are imported as ``slmops.*`` everywhere, also in a worker that loads a
# flow from its file (flows/retrain.py), and flow modules name their logger explicitly.
PROJECT_LOGGER = "slmops"


def _steps_log_to_run() -> None:
    """Send the project's INFO lines to the run's log (once per process). Prefect's
    root logger passes only warnings, and to the console alone: without this a run
    started by a worker (the UI, a schedule, an event) would show none of the steps'
    own lines, such as the train step's progress."""
    logger = logging.getLogger(PROJECT_LOGGER)
    with _lock:
        if not any(isinstance(h, _RunLogHandler) for h in logger.handlers):
            logger.addHandler(_RunLogHandler())
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)


def pipeline_flow(*, name: str, **options: Any) -> Callable[[Callable[..., Any]], Flow]:
    """``@flow`` for the pipeline's flows: a failure ends the run Failed with
    :func:`failure_message` and calls :func:`notify_failure`; the steps' INFO log lines
    go to the run's log (:func:`_steps_log_to_run`)."""

    def make(fn: Callable[..., Any]) -> Flow:
        # Types, not the strings of `from __future__ import annotations`: Prefect resolves
        # the parameters' annotations in the globals of `run` (this module), which lack a
        # flow module's own types (flows/parameters.py: Trigger, GateOverrides).
        fn.__annotations__ = typing.get_type_hints(fn, include_extras=True)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            _steps_log_to_run()
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                return _failed_state(name, exc)

        source = inspect.getsourcefile(fn)
        return Flow(
            run,
            name=name,
            # Versioned by the flow's own file, as @flow would (not by this one).
            version=file_hash(source) if source else None,
            on_failure=[notify_failure],
            on_crashed=[notify_failure],
            **options,
        )

    return make
