#!/usr/bin/env bash
# The whole test suite from a fresh clone: system packages the tests use (as root, on
# Debian/Ubuntu), a virtual environment with memtrack and its test extras, then pytest.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  while read -r cmd pkg; do
    case $cmd in
      /*) compgen -G "$cmd" >/dev/null || missing+=("$pkg") ;;   # a file (glob) the package installs
      *) command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg") ;;
    esac
  done <<'PKGS'
setpriv util-linux
unshare util-linux
gcc gcc
busybox busybox
mksh mksh
toybox toybox
sshd openssh-server
ssh openssh-client
clang clang
llvm-strip llvm
/usr/include/bpf/bpf_helpers.h libbpf-dev
/usr/lib/postgresql/*/bin/postgres postgresql
weston-simple-shm weston
PKGS
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# optional extras (top: rich, plot: matplotlib): their tests skip when these cannot be installed
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[top,plot]' \
  || echo "test.sh: the top/plot extras could not be installed; their tests will be skipped" >&2
exec .venv/bin/python -m pytest "$@"
