#!/usr/bin/env bash
# The end-to-end PostgreSQL image (postgres/Containerfile) on top of the base archive from
# base.sh, written as an OCI archive; no registry needed:
#   e2e/images/postgres.sh BASE.tar OUT.tar [NAME]      (as root; NAME: localhost/cdp-e2e-postgres:17)
# The base's Debian mirror provides the packages. The image replaces postgres:17-bookworm
# in the operator's StatefulSet without other changes.
set -euo pipefail

usage() { echo "usage: $0 BASE.tar OUT.tar [NAME]" >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 3 ] || usage
base=$(realpath "$1")
out=$2
name=${3:-localhost/cdp-e2e-postgres:17}
context=$(cd "$(dirname "${BASH_SOURCE[0]}")/postgres" && pwd)
[ -f "$base" ] || { echo "$0: no base archive $base (make it with base.sh)" >&2; exit 1; }
command -v buildah >/dev/null || { echo "$0: buildah is missing (base.sh installs it)" >&2; exit 1; }

# step LABEL CMD...: run CMD and report how long it took on stderr.
step() {
  local label=$1 start=$EPOCHREALTIME
  shift
  "$@"
  awk -v a="$start" -v b="$EPOCHREALTIME" -v l="$label" 'BEGIN { printf "[postgres] %s: %.1f s\n", l, b - a }' >&2
}

iidfile=$(mktemp)
image= base_id=
# Images already in buildah's store stay there; the build adds the base image and the result.
known=$(buildah images -q --no-trunc 2>/dev/null || true)
cleanup() {
  # Only the archive is kept: drop the built image, and the base unless it was there before.
  [ -z "$image" ] || buildah rmi "$image" >/dev/null 2>&1 || true
  if [ -n "$base_id" ] && ! grep -q "$base_id" <<<"$known"; then
    buildah rmi "$base_id" >/dev/null 2>&1 || true
  fi
  rm -f "$iidfile"
}
trap cleanup EXIT

build() {
  # chroot isolation: no user namespaces or systemd needed. Without --layers, all the
  # instructions end up in one layer on top of the base.
  buildah bud --isolation chroot --build-arg "BASE=oci-archive:$base" \
    --iidfile "$iidfile" -t "$name" -f "$context/Containerfile" "$context"
  image=$(<"$iidfile")
}
import_base() {
  # Done apart from the build to learn the base's image ID (to remove it afterwards).
  base_id=$(buildah pull --quiet "oci-archive:$base")
}
step "import the base image" import_base
step "build $name" build

push() {
  mkdir -p "$(dirname "$out")"
  rm -f "$out"
  buildah push --quiet "$image" "oci-archive:$out:$name"
}
step "write $out" push
echo "[postgres] $name -> $out ($(du -h "$out" | cut -f1))" >&2
