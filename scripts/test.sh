#!/usr/bin/env bash
# The whole test suite, installing what it needs. One debug build serves every step.
#   1. generated files (CRDs, chart CRDs) match the code
#   2. unit and integration tests, against real SQLite, a throw-away PostgreSQL and a
#      throw-away Kafka-compatible broker
#   3. rendered objects and every manifest under config/ and charts/ against the official schemas
#   4. end to end on a real cluster (e2e/), with the project's image built from this build's
#      binary, when CDP_E2E_TOOLKIT names a kube toolkit to bring the cluster up with
#      (against any other cluster: e2e/run.sh, see e2e/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

scripts/test-deps.sh

echo "== build"
cargo build --locked --bins --tests

echo "== generated files are up to date"
CDP_BIN=target/debug/cdp scripts/generate.sh
drift=$(git status --porcelain -- crds config/crd charts)
if [ -n "$drift" ]; then
  echo "generated files differ from the code; run scripts/generate.sh and commit:" >&2
  echo "$drift" >&2
  git --no-pager diff --stat -- crds config/crd charts >&2
  exit 1
fi

echo "== tests"
scripts/with-postgres.sh scripts/with-kafka.sh cargo test --locked --no-fail-fast

echo "== manifests"
rendered=target/rendered
rm -rf "$rendered" && mkdir -p "$rendered"
target/debug/cdp render -f config/samples > "$rendered/samples.yaml"
scripts/validate-manifests.sh "$rendered"

if [ -n "${CDP_E2E_TOOLKIT:-}" ]; then
  echo "== end to end, on a cluster of $CDP_E2E_TOOLKIT"
  e2e_started=$SECONDS
  CDP_BINARY=target/debug/cdp e2e/run.sh --toolkit "$CDP_E2E_TOOLKIT"
  echo "== end to end finished in $((SECONDS - e2e_started)) s"
else
  echo "== end to end: skipped, no cluster given (CDP_E2E_TOOLKIT=DIR, or e2e/run.sh against KUBECONFIG)"
fi

echo "== suite finished in $((SECONDS - started)) s"
