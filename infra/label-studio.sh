#!/usr/bin/env bash
# A throwaway Label Studio server on 127.0.0.1 for the review loop (`slmops review
# push|pull`) and its tests: its own virtual environment (label-studio's pins clash
# with the project's .venv, which this script never touches), its own data folder
# (SQLite), an admin user with a known API token made without a prompt, no telemetry
# and no calls out (analytics, version check and Sentry off).
#
#   infra/label-studio.sh install               # the venv with label-studio (about 1 minute, 1 GB)
#   infra/label-studio.sh start | status | url  # url: http://127.0.0.1:PORT
#   infra/label-studio.sh token | user | password  # the admin's API token, e-mail, password
#   infra/label-studio.sh stop [--remove]       # --remove also deletes the run folder (not the venv)
#
# The token is a legacy API token (`Authorization: Token ...`, what `slmops review`
# sends): set LABEL_STUDIO_API_KEY=$(infra/label-studio.sh token) and label_studio.url
# in params.yaml to the url.
#
# Settings (environment; defaults in brackets):
#   SLMOPS_LS_DIR     run folder: data/, log, pid, port, token, password [<repo>/.run/label-studio]
#   SLMOPS_LS_VENV    virtual environment with label-studio [<SLMOPS_LS_DIR>/venv]
#   SLMOPS_LS_PORT    port [a free one, chosen at the first start and kept in <dir>/port]
#   SLMOPS_LS_USER    the admin's e-mail, at the first start [admin@example.com]
#   SLMOPS_LS_PYTHON  python that makes the venv [python3]
#   SLMOPS_LS_START_TIMEOUT  seconds to wait for the server to answer [240]
#   SLMOPS_LS_WEBHOOK_TIMEOUT seconds a webhook call may take (Label Studio's default: 1) [5]
#   SLMOPS_LS_LOCAL_WEBHOOKS 1: webhooks may call addresses of this machine (the prediction
#                            service's /hooks/label-studio on 127.0.0.1), i.e. Label Studio's
#                            SSRF protection off; 0: its default, public addresses only [1]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR="${SLMOPS_LS_DIR:-$REPO/.run/label-studio}"
VENV="${SLMOPS_LS_VENV:-$DIR/venv}"
DATA="$DIR/data"
LOG="$DIR/log"
# Pinned: the client (tasks/labels/label_studio.py) speaks this version's API (legacy
# tokens behind LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN, the export endpoint, users API)
# and the settings below are this version's; a new release is tried here first.
VERSION=1.23.2

installed_version() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))' \
        2>/dev/null
}

install() {
    local have
    if have=$(installed_version) && [ "$have" = "$VERSION" ]; then
        echo "==> label-studio: $VERSION in $VENV"
        return 0
    fi
    local py="${SLMOPS_LS_PYTHON:-python3}"
    command -v "$py" >/dev/null 2>&1 || {
        echo "label-studio: no $py to make the virtual environment with (set SLMOPS_LS_PYTHON)" >&2
        exit 1
    }
    echo "==> label-studio: installing label-studio==$VERSION into $VENV (about 1 minute, 1 GB)"
    mkdir -p "$(dirname "$VENV")"
    [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
    # pip's output (warnings of the machine's pip configuration included) goes to a log,
    # shown when the install fails.
    local log="$VENV/install.log"
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "label-studio==$VERSION" >"$log" 2>&1; then
        echo "label-studio: pip could not install label-studio==$VERSION into $VENV" \
            "(no network? a package index is needed); last lines of $log:" >&2
        tail -n 15 "$log" >&2
        exit 1
    fi
    echo "==> label-studio: $(installed_version) in $VENV"
}

port() { [ -s "$DIR/port" ] && cat "$DIR/port"; }
pid() { [ -s "$DIR/pid" ] && cat "$DIR/pid"; }
alive() { local p; p=$(pid) && kill -0 "$p" 2>/dev/null; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

answers() {  # the server answers /health on its port
    local p
    p=$(port) || return 1
    "$VENV/bin/python" - "$p" <<'EOF' 2>/dev/null
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

running() { alive && answers; }

secret() {  # a random secret kept in <dir>/<name> (made once, readable by the owner only)
    local file="$DIR/$1"
    if [ ! -s "$file" ]; then
        (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(20))' >"$file")
    fi
    cat "$file"
}

check_token() {  # the saved token opens the API (a reused data folder may hold another one)
    "$VENV/bin/python" - "$(port)" "$(secret token)" <<'EOF'
import sys, urllib.request, urllib.error
req = urllib.request.Request(
    f"http://127.0.0.1:{sys.argv[1]}/api/current-user/whoami",
    headers={"Authorization": f"Token {sys.argv[2]}"},
)
try:
    urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as exc:
    sys.exit(f"label-studio: the token in the run folder is refused (HTTP {exc.code}); "
             "stop --remove and start again for a fresh server")
EOF
}

start() {
    local have
    have=$(installed_version) || {
        echo "label-studio: not installed in $VENV: run $0 install" >&2
        exit 1
    }
    [ "$have" = "$VERSION" ] || {
        echo "label-studio: $VENV has label-studio $have, this script runs $VERSION: run $0 install" >&2
        exit 1
    }
    mkdir -p "$DIR"
    if running; then
        echo "label-studio: already running on http://127.0.0.1:$(port) ($DIR)"
        return 0
    fi
    if alive; then  # started but not answering yet (another start is waiting for it)
        :
    else
        local p="${SLMOPS_LS_PORT:-$(port || free_port)}"
        echo "$p" >"$DIR/port"
        [ -s "$DIR/user" ] || echo "${SLMOPS_LS_USER:-admin@example.com}" >"$DIR/user"
        # setsid: its own process group, so stop ends the server and its children.
        (
            cd "$DIR"
            exec env \
                LABEL_STUDIO_BASE_DATA_DIR="$DATA" \
                DJANGO_DB=sqlite \
                LABEL_STUDIO_USERNAME="$(cat "$DIR/user")" \
                LABEL_STUDIO_PASSWORD="$(secret password)" \
                LABEL_STUDIO_USER_TOKEN="$(secret token)" \
                LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true \
                LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true \
                SECRET_KEY="$(secret secret_key)" \
                COLLECT_ANALYTICS=false \
                WEBHOOK_TIMEOUT="${SLMOPS_LS_WEBHOOK_TIMEOUT:-5}" \
                SSRF_PROTECTION_ENABLED="$([ "${SLMOPS_LS_LOCAL_WEBHOOKS:-1}" = 1 ] && echo false || echo true)" \
                LATEST_VERSION_CHECK=false \
                SENTRY_DSN= \
                FRONTEND_SENTRY_DSN= \
                setsid "$VENV/bin/label-studio" start --no-browser \
                --internal-host 127.0.0.1 --port "$p" --enable-legacy-api-token \
                --log-level WARNING
        ) >>"$LOG" 2>&1 </dev/null &
        echo $! >"$DIR/pid"
    fi
    local waited=0 limit="${SLMOPS_LS_START_TIMEOUT:-240}"
    until answers; do
        if ! alive; then
            echo "label-studio: exited before answering on http://127.0.0.1:$(port); last" \
                "lines of $LOG:" >&2
            tail -n 20 "$LOG" >&2 || true
            exit 1
        fi
        if [ "$waited" -ge "$limit" ]; then
            echo "label-studio: no answer on http://127.0.0.1:$(port) after ${limit}s; last" \
                "lines of $LOG:" >&2
            tail -n 20 "$LOG" >&2 || true
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    check_token
    echo "label-studio: started on http://127.0.0.1:$(port) in ${waited}s ($DIR, log $LOG)"
}

stop() {
    local p
    if p=$(pid) && kill -0 "$p" 2>/dev/null; then
        kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
        local i
        for i in $(seq 1 20); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.5
        done
        kill -0 "$p" 2>/dev/null && { kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p"; }
        echo "label-studio: stopped ($DIR)"
    else
        echo "label-studio: not running ($DIR)"
    fi
    rm -f "$DIR/pid"
    if [ "${1:-}" = --remove ] && [ -d "$DIR" ]; then
        # The virtual environment stays (a reinstall takes a minute and 1 GB of downloads).
        find "$DIR" -mindepth 1 -maxdepth 1 ! -path "$VENV" -exec rm -rf {} +
        rmdir "$DIR" 2>/dev/null || true
        echo "label-studio: removed $DIR$([ -d "$VENV" ] && [ "${VENV#"$DIR"/}" != "$VENV" ] && echo ", the venv kept")"
    fi
}

need_running() {
    running || {
        echo "label-studio: not running ($DIR): start it with $0 start" >&2
        exit 1
    }
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
    if [ -x "$VENV/bin/python" ] && running; then
        echo "label-studio: running on http://127.0.0.1:$(port) ($DIR)"
    else
        echo "label-studio: stopped ($DIR)"
        exit 3
    fi
    ;;
url)
    need_running
    echo "http://127.0.0.1:$(port)"
    ;;
token | user | password)
    [ -s "$DIR/$1" ] || {
        echo "label-studio: no $1 yet in $DIR: start the server once with $0 start" >&2
        exit 1
    }
    cat "$DIR/$1"
    ;;
*)
    echo "usage: $0 install | start | stop [--remove] | status | url | token | user | password" >&2
    exit 2
    ;;
esac
