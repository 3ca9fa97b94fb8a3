#!/usr/bin/env bash
# An end-to-end image from a build context's Containerfile on top of the base archive from
# base.sh, written as an OCI archive; no registry needed:
#   e2e/images/build.sh BASE.tar CONTEXT OUT.tar NAME       (as root)
# e.g. the PostgreSQL image (postgres/Containerfile; the base's Debian mirror provides the
# packages), which replaces postgres:17-bookworm in the operator's StatefulSet unchanged:
#   e2e/images/build.sh BASE.tar e2e/images/postgres OUT.tar localhost/cdp-e2e-postgres:17
set -euo pipefail

usage() { echo "usage: $0 BASE.tar CONTEXT OUT.tar NAME" >&2; exit 2; }
[ $# -eq 4 ] || usage
base=$(realpath "$1")
context=$(cd "$2" && pwd)
out=$3
name=$4
image_label=$(basename "$context")
[ -f "$base" ] || { echo "$0: no base archive $base (make it with base.sh)" >&2; exit 1; }
command -v buildah >/dev/null || { echo "$0: buildah is missing (base.sh installs it)" >&2; exit 1; }

# step LABEL CMD...: run CMD and report how long it took on stderr.
step() {
  local label=$1 start=$EPOCHREALTIME
  shift
  "$@"
  awk -v a="$start" -v b="$EPOCHREALTIME" -v l="$label" -v i="$image_label" 'BEGIN { printf "[%s] %s: %.1f s\n", i, l, b - a }' >&2
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
echo "[$image_label] $name -> $out ($(du -h "$out" | cut -f1))" >&2
