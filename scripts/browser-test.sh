#!/usr/bin/env bash
# Browser test of the dashboard: starts target/debug/tsad on a free port with a scratch
# SQLite database, drives the page in Debian's chromium (tests/browser/dashboard.mjs,
# playwright-core) and stops the server. Writes the screenshot to $TSAD_SCREENSHOT
# (default docs/dashboard.png).
#
#   scripts/browser-test.sh            # after `cargo build --bin tsad`
#   TSAD_BIN=target/release/tsad scripts/browser-test.sh
#
# Installs chromium with apt if it is missing. Skips (loudly, exit 0) only when the tsad
# binary has not been built; every other problem fails.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${TSAD_BIN:-target/debug/tsad}
if [[ ! -x $BIN ]]; then
    echo "=================================================================="
    echo "SKIPPED: browser test: $BIN is missing (run cargo build --bin tsad)"
    echo "=================================================================="
    exit 0
fi

export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [[ ! -x $CHROMIUM ]]; then
    echo "installing chromium (apt)"
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
command -v node >/dev/null || { echo "node is required (apt-get install nodejs npm)" >&2; exit 1; }

(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

scratch=$(mktemp -d)
server_pid=""
cleanup() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid"
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT

# The shipped model in a scratch models folder: the test trains a model, which must not
# land in the repository's models/.
mkdir "$scratch/models"
cp -r models/default "$scratch/models/"

# Port 0: the server picks a free port and logs it. No keys (the page's key handling is
# tested with intercepted requests); no automatic fits, which would only slow the run.
unset TSAD_API_KEYS TSAD_CONFIG
NO_COLOR=1 TSAD_LOG=info TSAD_AUTO_TRAIN_JOBS=0 \
    "$BIN" serve --listen 127.0.0.1:0 --database-url "sqlite://$scratch/tsad.db" --models-dir "$scratch/models" \
    >"$scratch/server.log" 2>&1 &
server_pid=$!

url=""
for _ in $(seq 1 600); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "tsad serve exited early:" >&2
        cat "$scratch/server.log" >&2
        exit 1
    fi
    if [[ -z $url ]]; then
        addr=$(grep -a "tsad serving" "$scratch/server.log" | grep -ao '127\.0\.0\.1:[0-9]\+' | head -1 || true)
        [[ -n $addr ]] && url="http://$addr"
    fi
    if [[ -n $url ]] && curl -fsS "$url/readyz" >/dev/null 2>&1; then
        break
    fi
    sleep 0.1
done
if [[ -z $url ]] || ! curl -fsS "$url/readyz" >/dev/null 2>&1; then
    echo "tsad serve did not become ready in 60 s:" >&2
    cat "$scratch/server.log" >&2
    exit 1
fi
echo "tsad serve at $url (database $scratch/tsad.db)"

status=0
TSAD_URL=$url node tests/browser/dashboard.mjs || status=$?
if [[ $status -ne 0 ]]; then
    echo "--- server log (last 40 lines) ---" >&2
    tail -n 40 "$scratch/server.log" >&2
fi
exit $status
