#!/usr/bin/env bash
# Make sure a headless browser is there for the browser tests (tests/infra):
# Debian's `chromium` package at /usr/bin/chromium, driven by Python
# `playwright` with executable_path (Playwright's own browser download is
# never used). Installs it with apt-get when it is missing and we are root;
# otherwise says what to run. Exit status 0 only when the browser is there.
#
#   infra/setup-browser.sh            # SLMOPS_CHROMIUM overrides the path
set -euo pipefail

CHROMIUM="${SLMOPS_CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    echo "==> browser: $CHROMIUM ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "==> browser: $CHROMIUM is missing; install it as root: apt-get install -y chromium" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "==> browser: $CHROMIUM is missing and there is no apt-get; install Chromium" \
        "and set SLMOPS_CHROMIUM to its path" >&2
    exit 1
fi

echo "==> browser: installing chromium with apt-get (about 1-2 minutes)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
if [ ! -x "$CHROMIUM" ]; then
    echo "==> browser: apt-get installed chromium but $CHROMIUM is still missing" >&2
    exit 1
fi
echo "==> browser: $CHROMIUM ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
