#!/usr/bin/env bash
# Minimal Debian root filesystem as a single-layer OCI archive, built without a registry:
#   e2e/images/base.sh OUT.tar [SUITE]        (as root; SUITE defaults to trixie)
# The archive holds the image localhost/cdp-e2e-base:SUITE. It stands in for debian:SUITE-slim
# (the postgres image's default base) and for distroless in the runtime image, so it gets
# nothing beyond debootstrap's minbase and, as distroless has, the CA bundle: the e2e images
# install what they need on top.
# The Debian mirror is the one this machine's apt uses; DEBIAN_MIRROR overrides it.
set -euo pipefail

usage() { echo "usage: $0 OUT.tar [SUITE]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
out=$1
suite=${2:-trixie}
name=localhost/cdp-e2e-base:$suite
[ "$(id -u)" = 0 ] || { echo "$0: must run as root (debootstrap, buildah mount)" >&2; exit 1; }

# step LABEL CMD...: run CMD and report how long it took on stderr.
step() {
  local label=$1 start=$EPOCHREALTIME
  shift
  "$@"
  awk -v a="$start" -v b="$EPOCHREALTIME" -v l="$label" 'BEGIN { printf "[base] %s: %.1f s\n", l, b - a }' >&2
}

install_tools() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v buildah >/dev/null || missing+=(buildah)
  [ ${#missing[@]} -gt 0 ] || return 0
  # The package lists may be stale or absent on a fresh machine: update only if needed.
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" ||
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; }
}

# The first http(s)/file URI that apt uses for this machine's own release (so neither the
# security archive nor third-party repositories), in one-line or deb822 format.
apt_mirror() {
  local codename files=()
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [ -n "$codename" ] || return 0
  [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*.list; do [ -f "$f" ] && files+=("$f"); done
  [ ${#files[@]} -gt 0 ] && awk -v s="$codename" '
    { sub(/#.*/, ""); gsub(/\[[^]]*\]/, "") }
    $1 == "deb" && $3 == s && $2 ~ /^(https?|file):/ { print $2 }' "${files[@]}"
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822: one paragraph per entry; field names are case-insensitive.
    awk -v s="$codename" 'BEGIN { RS = ""; FS = "\n" }
      { types = uris = suites = enabled = ""
        for (i = 1; i <= NF; i++) {
          line = $i; if (line ~ /^#/) continue
          key = tolower(line); sub(/:.*/, "", key); val = line; sub(/^[^:]*:[ \t]*/, "", val)
          if (key == "types") types = val; else if (key == "uris") uris = val
          else if (key == "suites") suites = val; else if (key == "enabled") enabled = tolower(val)
        }
        if (enabled == "no" || (" " types " ") !~ / deb /) next
        if ((" " suites " ") !~ (" " s " ")) next
        split(uris, u, /[ \t]+/)
        if (u[1] ~ /^(https?|file):/) print u[1] }' "$f"
  done
}

tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/cdp-e2e-base.XXXXXX")
rootfs=$tmp/rootfs
ctr=
cleanup() {
  [ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1 || true
  # A failed debootstrap can leave /proc or /sys mounted in the target: unmount before
  # deleting, and never let rm cross into another file system.
  awk -v t="$tmp/" 'index($2, t) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount -l "$m" || true; done
  rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT

step "install debootstrap, buildah" install_tools

mirror=${DEBIAN_MIRROR:-$(apt_mirror | sed -n 1p)}
mirror=${mirror:-http://deb.debian.org/debian}
echo "[base] debootstrap $suite from $mirror" >&2
bootstrap() {
  # Its output is long; show the end of it only when it fails.
  if ! debootstrap --variant=minbase --components=main --include=ca-certificates "$suite" "$rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1; then
    tail -30 "$tmp/debootstrap.log" >&2
    return 1
  fi
}
step "debootstrap --variant=minbase $suite" bootstrap

slim() {
  # debootstrap copies the build machine's resolver and host name; runtimes provide their own.
  rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
  # Package indexes and caches are stale by the time anyone uses the image (~50 MB).
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/log/bootstrap.log
  # Documentation and translations, like Debian's slim images; the dpkg filter keeps
  # later installs from bringing them back (copyright files stay).
  mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/excludes" <<'X'
# Container image: no manuals, documentation or translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
X
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/groff/* \
    "$rootfs"/usr/share/lintian/* "$rootfs"/usr/share/locale/*
  # The runtime mounts /dev; device nodes made by debootstrap do not belong in an image.
  find "$rootfs/dev" -mindepth 1 -delete
  # Programs expect a world-writable sticky /tmp (a read-only root mounts a volume there).
  mkdir -p "$rootfs/tmp" && chmod 1777 "$rootfs/tmp"
}
step "trim the root filesystem" slim

commit() {
  ctr=$(buildah from scratch)
  local mnt
  mnt=$(buildah mount "$ctr")
  # tar keeps owners, modes, links and capabilities exactly; buildah copy would not.
  tar -C "$rootfs" --numeric-owner --xattrs --xattrs-include='*' -cf - . |
    tar -C "$mnt" --numeric-owner --xattrs --xattrs-include='*' -xpf -
  buildah umount "$ctr" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd '["bash"]' --created-by "debootstrap --variant=minbase $suite" "$ctr"
  buildah commit --quiet --rm "$ctr" "$name" >/dev/null
  ctr=
}
step "commit $name" commit

push() {
  mkdir -p "$(dirname "$out")"
  rm -f "$out"
  buildah push --quiet "$name" "oci-archive:$out:$name"
  # The archive is the product; drop the copy in buildah's store.
  buildah rmi "$name" >/dev/null
}
step "write $out" push
echo "[base] $name -> $out ($(du -h "$out" | cut -f1))" >&2
