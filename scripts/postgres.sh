#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 for the tests: starts the
# machine's cluster if it is stopped, installs Debian's postgresql if there is none.
# Prints the URL the tests use (TSAD_TEST_DATABASE_URL).
set -euo pipefail
url=${TSAD_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! ready; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "postgres: installing Debian's postgresql" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  echo "postgres: starting cluster $version/main" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  for _ in $(seq 1 30); do ready && break; sleep 1; done
  ready || { echo "postgres: no server on 127.0.0.1:5432" >&2; exit 1; }
fi
echo "$url"
