#!/usr/bin/env bash
# Fuzzes the HTTP API from its own OpenAPI document with Schemathesis: starts `tsad serve`
# on a free loopback port with a scratch SQLite database, a scratch copy of models/ (so
# activations and training jobs never touch the repository) and API keys, then runs
# `schemathesis run …/openapi.json` with the admin key. Fails on any 5xx, and on any status
# code, content type, header or body that the document does not describe. Bounded: at most
# TSAD_FUZZ_EXAMPLES cases per operation and TSAD_FUZZ_SECONDS in all.
#
#   scripts/api-fuzz.sh                # defaults below
#   scripts/api-fuzz.sh --seed 7       # extra arguments go to `schemathesis run`
#
# Environment:
#   TSAD_CACHE          where Schemathesis's virtualenv lives (default: ~/.cache/tsad)
#   TSAD_BIN            the binary to fuzz (default: target/debug/tsad, built if missing)
#   TSAD_FUZZ_EXAMPLES  most test cases per operation (default: 30)
#   TSAD_FUZZ_SECONDS   time budget of the whole run (default: 240)
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${TSAD_CACHE:-$HOME/.cache/tsad}
venv=$cache/schemathesis-$SCHEMATHESIS_VERSION
if [[ ! -x $venv/bin/schemathesis ]]; then
  echo "api-fuzz: installing schemathesis==$SCHEMATHESIS_VERSION into $venv (one time)" >&2
  mkdir -p "$cache"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

bin=${TSAD_BIN:-$root/target/debug/tsad}
if [[ -z ${TSAD_BIN:-} && ! -x $bin ]]; then
  (cd "$root" && cargo build --bin tsad)
fi

scratch=$(mktemp -d)
server=
cleanup() {
  if [[ -n $server ]]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT

cp -r "$root/models" "$scratch/models"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
suffix=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
admin=admin-$suffix
base=http://127.0.0.1:$port

TSAD_AUTO_TRAIN_JOBS=0 TSAD_LOG=${TSAD_LOG:-warn} "$bin" serve \
  --listen "127.0.0.1:$port" \
  --database-url "sqlite://$scratch/x.db?mode=rwc" \
  --models-dir "$scratch/models" \
  --api-keys "read:read-$suffix,write:write-$suffix,admin:$admin" \
  --inference-threads 1 \
  >"$scratch/serve.log" 2>&1 &
server=$!

for _ in $(seq 1 120); do
  if curl -fsS "$base/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then
    echo "api-fuzz: tsad serve exited:" >&2
    cat "$scratch/serve.log" >&2
    exit 1
  fi
  sleep 0.5
done
curl -fsS "$base/readyz" >/dev/null

# Schemathesis has no serializer for NDJSON (the readings endpoints take it): one generated
# reading object becomes one line.
cat >"$scratch/tsad_fuzz_hooks.py" <<'PY'
import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    return (json.dumps(value) + "\n").encode()
PY

status=0
PYTHONPATH=$scratch SCHEMATHESIS_HOOKS=tsad_fuzz_hooks "$venv/bin/schemathesis" run "$base/openapi.json" \
  --header "Authorization: Bearer $admin" \
  --checks "$CHECKS" \
  --max-examples "${TSAD_FUZZ_EXAMPLES:-30}" \
  --max-time "${TSAD_FUZZ_SECONDS:-240}" \
  --request-timeout 30 \
  --generation-database none \
  --no-color \
  "$@" || status=$?

# Independent of Schemathesis's checks: the service's own count of 5xx answers.
server_errors=$(curl -fsS "$base/metrics" | awk '/^tsad_http_requests_total\{/ && /status="5[0-9][0-9]"/ { n += $NF } END { print n + 0 }')
echo "api-fuzz: 5xx answers counted by the service: $server_errors"
if grep -qE 'ERROR|panicked' "$scratch/serve.log"; then
  echo "api-fuzz: errors in the service's log:" >&2
  grep -E 'ERROR|panicked' "$scratch/serve.log" | head -20 >&2
  status=1
fi
if [[ $server_errors != 0 ]]; then
  status=1
fi
if ! kill -0 "$server" 2>/dev/null; then
  echo "api-fuzz: tsad serve died during the run" >&2
  status=1
fi
exit "$status"
