#!/usr/bin/env bash
# Run a command against a throw-away PostgreSQL server, e.g.
#   scripts/with-postgres.sh cargo test
# The server lives in a temporary directory and is removed on exit. The command sees
#   CDP_TEST_POSTGRES_URL=postgres://cdp@127.0.0.1:PORT/postgres
# (tests and `cdp bench` create a scratch database per run on it).
# PG_OPTS adds server options; the default turns fsync off, which only tests should do:
# benchmarks pass PG_OPTS="-c fsync=on".
set -euo pipefail
bin=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  echo "PostgreSQL server binaries not found; run scripts/test-deps.sh" >&2
  exit 1
fi
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$dir"
  as_pg=(sudo -u postgres)
fi
"${as_pg[@]}" "$bin/initdb" -D "$dir/data" -U cdp --auth=trust -E UTF8 >/dev/null
stop() {
  "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop EXIT
"${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 ${PG_OPTS:--c fsync=off}" >/dev/null
export CDP_TEST_POSTGRES_URL="postgres://cdp@127.0.0.1:$port/postgres"
"$@"
