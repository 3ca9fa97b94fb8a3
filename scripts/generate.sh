#!/usr/bin/env bash
# Regenerate every file derived from the code: the CRDs in crds/, config/crd/bases/ and the
# Helm chart. CI runs this and fails when the result differs from what is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
cdp="${CDP_BIN:-target/debug/cdp}"
[ -x "$cdp" ] || cargo build --quiet --bin cdp
rm -f crds/*.yaml config/crd/bases/*.yaml charts/cdp-operator/templates/crds/*.yaml
"$cdp" crd --output-dir crds
"$cdp" crd --output-dir config/crd/bases
"$cdp" crd --output-dir charts/cdp-operator/templates/crds --flavour helm
