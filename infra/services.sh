#!/usr/bin/env bash
# Local services on 127.0.0.1: a Prefect server (API + UI), a Prefect worker on a
# process work pool, and an MLflow server (tracking, registry, UI, artifacts).
#
#   infra/services.sh start | stop | status
#
# Each service runs in the background in its own session (process group), with
# its PID in $SLMOPS_RUN_DIR/<name>.pid and its log in $SLMOPS_RUN_DIR/<name>.log.
# `stop` ends exactly those process groups (and the flow runs the worker started),
# TERM first, KILL after a grace period. `start` returns once the Prefect API
# answers, the worker has reported to its pool and the MLflow server answers.
#
# Settings (environment; defaults in brackets):
#   SLMOPS_RUN_DIR               PIDs and logs [<repo>/.run]
#   SLMOPS_BIN                   bin dir holding python, prefect and mlflow [<repo>/.venv/bin]
#   SLMOPS_ROOT                  code checkout the worker runs flows from [<repo>]
#   SLMOPS_WORK_POOL             process work pool [slmops-process]
#   PREFECT_PORT, MLFLOW_PORT    [4200], [5000]
#   PREFECT_HOME                 the Prefect server's database and the CLI's profiles
#                                [Prefect's default, ~/.prefect]
#   MLFLOW_BACKEND_STORE_URI     runs and registry [sqlite:///<repo>/mlflow/mlflow.db]
#   MLFLOW_ARTIFACTS_DESTINATION artifacts the server stores [<repo>/mlflow/artifacts]
#   SLMOPS_START_TIMEOUT         seconds to wait for each service [180]
#   SLMOPS_DB                    sqlite, or postgres: MLflow and the Prefect server on
#                                the PostgreSQL cluster of infra/postgres.sh (started
#                                when not running, stopped by `stop` only if `start`
#                                started it; databases mlflow, prefect, feedback) [sqlite]
#   SLMOPS_PG_DIR, SLMOPS_PG_PORT  that cluster's folder and port [$SLMOPS_RUN_DIR/postgres]
# Then point clients at them:
#   export PREFECT_API_URL=http://127.0.0.1:4200/api
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
RUN="${SLMOPS_RUN_DIR:-$REPO/.run}"
BIN="${SLMOPS_BIN:-$REPO/.venv/bin}"
CODE_ROOT="${SLMOPS_ROOT:-$REPO}"
POOL="${SLMOPS_WORK_POOL:-slmops-process}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
TIMEOUT="${SLMOPS_START_TIMEOUT:-180}"
export MLFLOW_BACKEND_STORE_URI="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$REPO/mlflow/mlflow.db}"
export MLFLOW_ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-$REPO/mlflow/artifacts}"
SERVICES=(prefect-server mlflow-server prefect-worker)
DB="${SLMOPS_DB:-sqlite}"
export SLMOPS_PG_DIR="${SLMOPS_PG_DIR:-$RUN/postgres}"
POSTGRES="$REPO/infra/postgres.sh"
# Present while the cluster runs because `start` started it: `stop` then stops it.
PG_OURS="$RUN/postgres.started-by-services"
case $DB in
sqlite | postgres) ;;
*)
    echo "SLMOPS_DB=$DB: expected sqlite or postgres" >&2
    exit 2
    ;;
esac

# No telemetry, no hub downloads, no promotional content: nothing reaches the network
# (docs/architecture.md).
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true
export HF_HUB_OFFLINE=1 PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT=false
# MLflow's job runner (GenAI prompt optimisation, trace rollups) starts seven extra
# processes (~1.2 GB); nothing here uses it.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

PREFECT_API="http://127.0.0.1:$PREFECT_PORT/api"
MLFLOW_URL="http://127.0.0.1:$MLFLOW_PORT"

# What each service's command line contains: a PID file whose process does not
# match (a stale file, a recycled PID) is never treated as ours.
signature() {
    case $1 in
    prefect-server) echo "server start" ;;
    prefect-worker) echo "worker start" ;;
    mlflow-server) echo "mlflow" ;;
    esac
}

pid_of() { [ -f "$RUN/$1.pid" ] && cat "$RUN/$1.pid"; }

alive() {  # name: the recorded PID runs and is this service
    local pid args
    pid=$(pid_of "$1") || return 1
    args=$(ps -o args= -p "$pid" 2>/dev/null) || return 1
    [[ $args == *"$(signature "$1")"* ]]
}

launch() {  # name, command...
    local name=$1
    shift
    if alive "$name"; then
        echo "$name: already running (pid $(pid_of "$name"))"
        return 0
    fi
    # setsid: the service leads its own session and process group, so stop can end
    # its children too. The PID is written from inside (setsid may fork).
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/$name.pid" "$@" \
        >"$RUN/$name.log" 2>&1 </dev/null &
    local i
    for ((i = 0; i < 50; i++)); do
        [ -s "$RUN/$name.pid" ] && break
        sleep 0.1
    done
    echo "$name: started (pid $(pid_of "$name"), log $RUN/$name.log)"
}

fail() {  # name, message: say why, show the log's end, exit 1
    echo "$1: $2; last lines of $RUN/$1.log:" >&2
    tail -n 30 "$RUN/$1.log" >&2 || true
    echo "(stop what did start with: $0 stop)" >&2
    exit 1
}

# Polls a condition written in Python (stdlib only) until it holds.
wait_for() {  # name, description, python condition code, its arguments...
    local name=$1 what=$2 code=$3 start=$SECONDS
    shift 3
    while ((SECONDS - start < TIMEOUT)); do
        if "$BIN/python" -c "$code" "$@" >/dev/null 2>&1; then
            echo "$name: $what after $((SECONDS - start)) s"
            return 0
        fi
        alive "$name" || fail "$name" "exited"
        sleep 1
    done
    fail "$name" "not $what after ${TIMEOUT} s"
}

HTTP_OK='import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3).read()'
# The worker named argv[2] sent a heartbeat after argv[3] (epoch seconds): this very
# worker is polling, not one from an earlier start that the pool still remembers.
WORKER_ONLINE='import datetime, json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=b"{}", headers={"Content-Type": "application/json"})
workers = json.load(urllib.request.urlopen(req, timeout=3))
since = float(sys.argv[3])
sys.exit(not any(
    w["name"] == sys.argv[2] and w.get("last_heartbeat_time")
    and datetime.datetime.fromisoformat(w["last_heartbeat_time"]).timestamp() >= since
    for w in workers))'

descendants() {  # pid: every process below it (flow runs live in sessions of their own)
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

# Seconds a service gets to exit after TERM. The worker's first interrupt only stops
# polling (Prefect 3.8 then waits on its own); its second one kills it, so waiting
# longer gains nothing.
grace() {
    case $1 in
    prefect-worker) echo 2 ;;
    *) echo 10 ;;
    esac
}

gone() {  # pid: no process of its group is left
    ! kill -0 -- "-$1" 2>/dev/null
}

stop_one() {
    local name=$1 pid procs start=$SECONDS i
    pid=$(pid_of "$name") || return 0
    if ! alive "$name"; then
        rm -f "$RUN/$name.pid"
        return 0
    fi
    procs=$(descendants "$pid")
    # The group (the service and what it started), and the processes that left it
    # (the worker's flow runs, each in a session of its own): a flow run must not
    # outlive the servers it reports to.
    kill -TERM -- "-$pid" 2>/dev/null || true
    # shellcheck disable=SC2086
    [ -z "$procs" ] || kill -TERM $procs 2>/dev/null || true
    for ((i = 0; i < $(grace "$name") * 4; i++)); do
        gone "$pid" && break
        sleep 0.25
    done
    if ! gone "$pid"; then
        kill -TERM -- "-$pid" 2>/dev/null || true  # Prefect: the second interrupt kills
        sleep 0.5
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    # shellcheck disable=SC2086
    [ -z "$procs" ] || kill -KILL $procs 2>/dev/null || true
    rm -f "$RUN/$name.pid"
    echo "$name: stopped (pid $pid, $((SECONDS - start)) s)"
}

case "${1:-}" in
start)
    for tool in python prefect mlflow; do
        [ -x "$BIN/$tool" ] || {
            echo "no $BIN/$tool: run make setup (or set SLMOPS_BIN)" >&2
            exit 1
        }
    done
    mkdir -p "$RUN"
    if [ -n "${PREFECT_HOME:-}" ]; then
        mkdir -p "$PREFECT_HOME"
        export PREFECT_HOME
    fi
    if [ "$DB" = postgres ]; then
        if ! "$POSTGRES" status >/dev/null 2>&1; then
            "$POSTGRES" start
            touch "$PG_OURS"
        fi
        pg_url=$("$POSTGRES" url)  # postgresql+psycopg://slmops@127.0.0.1:PORT/postgres
        # One database per store, made once (CREATE DATABASE cannot run in a transaction).
        "$BIN/python" -c 'import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as db:
    have = {r[0] for r in db.execute("SELECT datname FROM pg_database")}
    for name in sys.argv[2:]:
        if name not in have:
            db.execute(f"CREATE DATABASE {name}")' \
            "${pg_url/+psycopg/}" mlflow prefect feedback
        export MLFLOW_BACKEND_STORE_URI="${pg_url%/postgres}/mlflow"
        pg_prefect="${pg_url%/postgres}/prefect"
        export PREFECT_SERVER_DATABASE_CONNECTION_URL="${pg_prefect/+psycopg/+asyncpg}"
        echo "postgres: MLflow on ${MLFLOW_BACKEND_STORE_URI}, Prefect on" \
            "$PREFECT_SERVER_DATABASE_CONNECTION_URL"
    fi
    case $MLFLOW_BACKEND_STORE_URI in
    sqlite:///*) mkdir -p "$(dirname "${MLFLOW_BACKEND_STORE_URI#sqlite:///}")" ;;
    esac
    case $MLFLOW_ARTIFACTS_DESTINATION in
    *://*) ;;
    *) mkdir -p "$MLFLOW_ARTIFACTS_DESTINATION" ;;
    esac
    # Both servers start at once (Prefect answers in ~10 s, MLflow in ~30 s).
    # The server ignores any PREFECT_API_URL of the caller's.
    # Host and port go in as settings too: the UI derives the API address it calls
    # from them (PREFECT_SERVER_API_PORT), not from the command line.
    (
        unset PREFECT_API_URL
        export PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT="$PREFECT_PORT"
        export PREFECT_UI_API_URL="$PREFECT_API"
        launch prefect-server "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
    )
    # Backend store and artifacts destination come from the MLFLOW_* variables above;
    # artifacts are proxied by the server (mlflow-artifacts:/), so clients need no
    # access to the destination. One worker process is plenty on one machine.
    launch mlflow-server "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
    wait_for prefect-server "answering at $PREFECT_API" "$HTTP_OK" "$PREFECT_API/health"

    # The worker, and the flow runs it starts, report to these servers.
    export PREFECT_API_URL="$PREFECT_API" MLFLOW_TRACKING_URI="$MLFLOW_URL"
    # The worker creates its process work pool when the server has none of that name.
    # Flow runs start in the code checkout and can import its packages (flows, tasks).
    worker="slmops-worker-$(hostname)"
    launched=$(date +%s)
    alive prefect-worker && launched=0  # already polling: no new heartbeat to wait for
    # SLMOPS_ROOT: where the pull step of prefect.yaml's deployments runs them.
    (
        cd "$CODE_ROOT"
        export PYTHONPATH="$CODE_ROOT${PYTHONPATH:+:$PYTHONPATH}" SLMOPS_ROOT="$CODE_ROOT"
        launch prefect-worker "$BIN/prefect" worker start --pool "$POOL" --type process \
            --name "$worker"
    )
    wait_for prefect-worker "polling pool $POOL" "$WORKER_ONLINE" \
        "$PREFECT_API/work_pools/$POOL/workers/filter" "$worker" "$((launched - 1))"
    wait_for mlflow-server "answering at $MLFLOW_URL" "$HTTP_OK" "$MLFLOW_URL/health"
    echo "export PREFECT_API_URL=$PREFECT_API"
    echo "export MLFLOW_TRACKING_URI=$MLFLOW_URL"
    if [ "$DB" = postgres ]; then
        echo "# the feedback store on the same cluster, in params.yaml:"
        echo "#   feedback.db_url: ${pg_url%/postgres}/feedback"
    fi
    ;;
stop)
    for name in prefect-worker mlflow-server prefect-server; do stop_one "$name"; done
    if [ -f "$PG_OURS" ]; then
        "$POSTGRES" stop
        rm -f "$PG_OURS"
    fi
    ;;
status)
    code=0
    for name in "${SERVICES[@]}"; do
        if alive "$name"; then
            echo "$name: running (pid $(pid_of "$name"), log $RUN/$name.log)"
        else
            echo "$name: stopped"
            code=3
        fi
    done
    if [ "$DB" = postgres ]; then
        "$POSTGRES" status || code=3
    fi
    exit $code
    ;;
*)
    echo "usage: $0 start | stop | status" >&2
    exit 2
    ;;
esac
