#!/usr/bin/env bash
# Makes sure a redis-server binary is available: the tests, the demo and the benches start
# private servers on free loopback ports. Installs Debian's package when it can (root + apt);
# otherwise says exactly what to do. Never touches a server that is already running.
set -euo pipefail

if [ -n "${REDIS_SERVER_BIN:-}" ] && [ -x "${REDIS_SERVER_BIN}" ]; then exit 0; fi
if command -v redis-server >/dev/null 2>&1; then exit 0; fi

if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" != none ]; then
    echo "redis-server not found: installing Debian's redis-server package..." >&2
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >&2
    command -v redis-server >/dev/null 2>&1 && exit 0
  fi
fi

cat >&2 <<'MSG'
redis-server is not installed, and this script cannot install it here.
Install it, then re-run:
  Debian/Ubuntu:  sudo apt-get install redis-server
  Fedora:         sudo dnf install redis
  macOS:          brew install redis
or set REDIS_SERVER_BIN=/path/to/redis-server.
MSG
exit 1
