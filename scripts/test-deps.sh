#!/usr/bin/env bash
# Install what the build and the data-plane tests need on a Debian/Ubuntu machine: OpenSSL's
# headers and pkg-config (librdkafka is built with TLS and SASL/SCRAM against the system's
# OpenSSL), PostgreSQL (its server binaries, started throw-away by scripts/with-postgres.sh),
# sudo (to run it as the postgres user when the tests run as root), curl (the README
# walkthrough test runs its commands), promtool, from Debian's prometheus package (the
# alerting rules' unit tests), and headless Chromium with its WebDriver (the console's
# browser test drives the page in a real browser).
set -euo pipefail
need=()
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev)
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || need+=(postgresql)
command -v sudo >/dev/null 2>&1 || need+=(sudo)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  as_root=()
  [ "$(id -u)" = 0 ] || as_root=(sudo)
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi
# the packaged PostgreSQL cluster and Prometheus server are not used: tests start their own
# databases and need only promtool
if command -v service >/dev/null 2>&1; then
  for packaged in postgresql prometheus prometheus-node-exporter; do service "$packaged" stop >/dev/null 2>&1 || true; done
fi
echo "test dependencies ready: $(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
