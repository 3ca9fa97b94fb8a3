#!/usr/bin/env bash
# The Python tools of the checks in one virtual environment, created or brought up to date
# when their pinned requirements change: the manifest validators, and Helm's Go SDK (its
# Python bindings) where no helm binary is installed. Prints the environment's python.
#   VALIDATE_VENV  where it lives (default .venv-ci in the repository, git-ignored)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VALIDATE_VENV:-$ROOT/.venv-ci}"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else return 1; fi
}
apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
    { as_root apt-get update -qq && as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}

if ! command -v python3 >/dev/null 2>&1; then
  apt_install python3 python3-venv || { echo "python3 is missing and could not be installed" >&2; exit 1; }
fi
if [ ! -x "$VENV/bin/python" ]; then
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 ships venv's ensurepip separately.
    rm -rf "$VENV"
    apt_install python3-venv || { echo "python3 -m venv failed and python3-venv could not be installed" >&2; exit 1; }
    python3 -m venv "$VENV"
  fi
fi
# A venv inside the repository must never be committed.
[ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check --no-input)

# Reinstall only when the pinned requirements changed.
REQ="scripts/validate-manifests.requirements.txt"
STAMP="$VENV/.requirements.sha256"
if [ "$(sha256sum "$REQ" | cut -d' ' -f1)" != "$(cat "$STAMP" 2>/dev/null || true)" ]; then
  "${PIP[@]}" -r "$REQ" >&2
  sha256sum "$REQ" | cut -d' ' -f1 > "$STAMP"
fi
if ! command -v helm >/dev/null 2>&1 && ! "$PY" -c 'import helm_python' 2>/dev/null; then
  "${PIP[@]}" -r scripts/validate-manifests.helm-requirements.txt >&2 ||
    echo "no helm binary and helm-python-sdk could not be installed" >&2
fi
echo "$PY"
