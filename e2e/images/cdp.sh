#!/usr/bin/env bash
# The project's image from its own Dockerfile (the `runtime` stage: non-root, nothing but the
# binary on the base) with a binary built outside, written as an OCI archive; no registry needed:
#   e2e/images/cdp.sh BASE.tar CDP_BINARY OUT.tar [NAME]      (as root; NAME: ghcr.io/cdp-operator/cdp:VERSION)
# BASE.tar (from base.sh) stands in for distroless where no registry is reachable.
set -euo pipefail

usage() { echo "usage: $0 BASE.tar CDP_BINARY OUT.tar [NAME]" >&2; exit 2; }
[ $# -ge 3 ] && [ $# -le 4 ] || usage
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
base=$(realpath "$1")
binary=$(realpath "$2")
out=$3
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
name=${4:-ghcr.io/cdp-operator/cdp:$version}
[ -f "$base" ] || { echo "$0: no base archive $base (make it with base.sh)" >&2; exit 1; }
[ -x "$binary" ] || { echo "$0: $binary is not an executable" >&2; exit 1; }
command -v buildah >/dev/null || { echo "$0: buildah is missing (base.sh installs it)" >&2; exit 1; }

started=$EPOCHREALTIME
# A one-file build context: the Dockerfile's `prebuilt` stage takes `cdp` from its root.
context=$(mktemp -d "${TMPDIR:-/var/tmp}/cdp-image.XXXXXX")
iidfile=$context.iid
image=
cleanup() {
  [ -z "$image" ] || buildah rmi "$image" >/dev/null 2>&1 || true
  rm -rf "$context" "$iidfile"
}
trap cleanup EXIT
cp "$binary" "$context/cdp"
buildah bud --quiet --isolation chroot --target runtime \
  --build-arg "RUNTIME_BASE=oci-archive:$base" --build-arg BINARY=prebuilt \
  --iidfile "$iidfile" -t "$name" -f "$root/Dockerfile" "$context" >/dev/null
image=$(<"$iidfile")
mkdir -p "$(dirname "$out")"
rm -f "$out"
buildah push --quiet "$image" "oci-archive:$out:$name"
awk -v a="$started" -v b="$EPOCHREALTIME" -v n="$name" -v o="$out" -v s="$(du -h "$out" | cut -f1)" \
  'BEGIN { printf "[cdp] %s -> %s (%s) in %.1f s\n", n, o, s, b - a }' >&2
