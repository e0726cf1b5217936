#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on 127.0.0.1 for tests and for `make services` with
# SLMOPS_DB=postgres: its own data folder, its unix socket in the run folder, one
# superuser `slmops` trusted without a password (reachable from this machine only).
# Postgres refuses to run as root: under root the cluster runs as `postgres` (or
# `nobody`), which then owns the run folder.
#
#   infra/postgres.sh install               # Debian's server when missing (as root)
#   infra/postgres.sh start | status | url  # url: postgresql+psycopg://slmops@127.0.0.1:PORT/postgres
#   infra/postgres.sh stop [--remove]       # --remove also deletes the run folder
#
# Settings (environment; defaults in brackets):
#   SLMOPS_PG_DIR        run folder: data/, log, port, socket [<repo>/.run/postgres]
#   SLMOPS_PG_PORT       port [a free one, chosen at the first start and kept in <dir>/port]
#   SLMOPS_PG_THROWAWAY  1: no fsync (fast; a crash loses the cluster) [0]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR="${SLMOPS_PG_DIR:-$REPO/.run/postgres}"
DATA="$DIR/data"
LOG="$DIR/log"

pg_binary() {  # name: on PATH, else the newest under /usr/lib/postgresql
    local found
    if found=$(command -v "$1" 2>/dev/null); then
        echo "$found"
        return 0
    fi
    found=$(ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1)
    [ -n "$found" ] && echo "$found"
}

have_server() { pg_binary initdb >/dev/null && pg_binary pg_ctl >/dev/null; }

install() {
    if have_server; then
        echo "==> postgres: $(pg_binary initdb) ($("$(pg_binary pg_ctl)" --version))"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "==> postgres: no server binaries (initdb, pg_ctl); install them as root:" \
            "apt-get install -y postgresql" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "==> postgres: no server binaries (initdb, pg_ctl) and no apt-get; install" \
            "PostgreSQL and put its bin folder on PATH" >&2
        exit 1
    fi
    echo "==> postgres: installing postgresql with apt-get (about 1 minute)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --no-install-recommends: the server only, no locales or extra tools.
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    if ! have_server; then
        echo "==> postgres: apt-get installed postgresql but initdb/pg_ctl are still missing" >&2
        exit 1
    fi
    echo "==> postgres: $(pg_binary initdb) ($("$(pg_binary pg_ctl)" --version))"
}

# Under root: the user the cluster runs as, and a prefix that runs a command as it.
AS=()
run_user() {
    if [ "$(id -u)" -ne 0 ]; then
        return 0
    fi
    local name
    for name in postgres nobody; do
        if id -u "$name" >/dev/null 2>&1; then
            AS=(runuser -u "$name" --)
            USER_NAME=$name
            return 0
        fi
    done
    echo "postgres: running as root and there is no non-root user (postgres, nobody)" \
        "to run the cluster as" >&2
    exit 1
}

pg_ctl_() { (cd "$DIR" && "${AS[@]}" "$(pg_binary pg_ctl)" -D "$DATA" "$@"); }

running() { [ -f "$DATA/PG_VERSION" ] && pg_ctl_ status >/dev/null 2>&1; }

port() {  # the saved port, if any
    [ -s "$DIR/port" ] && cat "$DIR/port"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

need_server() {
    have_server || {
        echo "postgres: no server binaries (initdb, pg_ctl) on PATH or under" \
            "/usr/lib/postgresql: run $0 install (as root) or apt-get install -y postgresql" >&2
        exit 1
    }
}

start() {
    need_server
    run_user
    mkdir -p "$DIR"
    if [ -n "${USER_NAME:-}" ]; then
        chown "$USER_NAME" "$DIR"
        "${AS[@]}" test -w "$DIR" || {
            echo "postgres: $USER_NAME cannot write to $DIR (a parent folder is closed to" \
                "it); set SLMOPS_PG_DIR to a folder it can reach, e.g. under /tmp" >&2
            exit 1
        }
    fi
    if running; then
        echo "postgres: already running on 127.0.0.1:$(port) ($DIR)"
        return 0
    fi
    local p="${SLMOPS_PG_PORT:-$(port || free_port)}" sync=() options
    echo "$p" >"$DIR/port"
    [ "${SLMOPS_PG_THROWAWAY:-0}" = 1 ] && sync=(--no-sync)
    if [ ! -f "$DATA/PG_VERSION" ]; then
        local made
        # shellcheck disable=SC2068
        if ! made=$(cd "$DIR" && "${AS[@]}" "$(pg_binary initdb)" -D "$DATA" -U slmops \
            -A trust -E UTF8 ${sync[@]} 2>&1); then
            echo "postgres: initdb failed:" >&2
            echo "$made" >&2
            exit 1
        fi
    fi
    # Only 127.0.0.1 (trust authentication: no one else may reach it); the socket
    # lives in the run folder, not /var/run/postgresql (which needs root).
    options="-c listen_addresses=127.0.0.1 -p $p -k $DIR"
    [ "${SLMOPS_PG_THROWAWAY:-0}" = 1 ] && options="$options -c fsync=off"
    [ -n "${USER_NAME:-}" ] && { touch "$LOG"; chown "$USER_NAME" "$LOG"; }
    if ! pg_ctl_ -l "$LOG" -o "$options" -w -t 60 start >/dev/null 2>&1; then
        echo "postgres: did not start on 127.0.0.1:$p; last lines of $LOG:" >&2
        tail -n 20 "$LOG" >&2 || true
        exit 1
    fi
    echo "postgres: started on 127.0.0.1:$p ($DIR, log $LOG)"
}

stop() {
    if [ -f "$DATA/PG_VERSION" ] && have_server; then
        run_user
        if running; then
            pg_ctl_ -m fast -w -t 60 stop >/dev/null
            echo "postgres: stopped ($DIR)"
        else
            echo "postgres: not running ($DIR)"
        fi
    else
        echo "postgres: not running ($DIR)"
    fi
    if [ "${1:-}" = --remove ]; then
        rm -rf "$DIR"
        echo "postgres: removed $DIR"
    fi
}

case "${1:-}" in
install) install ;;
start) start ;;
stop)
    case "${2:-}" in
    "" | --remove) stop "${2:-}" ;;
    *)
        echo "usage: $0 stop [--remove]" >&2
        exit 2
        ;;
    esac
    ;;
status)
    if have_server && { run_user; running; }; then
        echo "postgres: running on 127.0.0.1:$(port) ($DIR)"
    else
        echo "postgres: stopped ($DIR)"
        exit 3
    fi
    ;;
url)
    if ! { have_server && run_user && running; }; then
        echo "postgres: not running ($DIR): start it with $0 start" >&2
        exit 1
    fi
    echo "postgresql+psycopg://slmops@127.0.0.1:$(port)/postgres"
    ;;
*)
    echo "usage: $0 install | start | stop [--remove] | status | url" >&2
    exit 2
    ;;
esac
