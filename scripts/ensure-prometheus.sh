#!/usr/bin/env bash
# Makes sure the `prometheus` and `promtool` binaries are available: tests/dashboard.rs starts a
# private Prometheus on a free loopback port to prove the dashboard and the alerts on live data.
# Installs Debian's package when it can (root + apt; its service is not started here); otherwise
# says exactly what to do. Never touches a Prometheus that is already running.
set -euo pipefail

have() {
  { [ -n "${PROMETHEUS_BIN:-}" ] && [ -x "${PROMETHEUS_BIN}" ] || command -v prometheus >/dev/null 2>&1; } &&
    { [ -n "${PROMTOOL_BIN:-}" ] && [ -x "${PROMTOOL_BIN}" ] || command -v promtool >/dev/null 2>&1; }
}
if have; then exit 0; fi

if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" != none ]; then
    echo "prometheus/promtool not found: installing Debian's prometheus package..." >&2
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >&2
    have && exit 0
  fi
fi

cat >&2 <<'MSG'
prometheus and promtool are not installed, and this script cannot install them here.
Install them, then re-run:
  Debian/Ubuntu:  sudo apt-get install prometheus
  Fedora:         sudo dnf install golang-github-prometheus   (or a release tarball)
  macOS:          brew install prometheus
or set PROMETHEUS_BIN=/path/to/prometheus and PROMTOOL_BIN=/path/to/promtool.
MSG
exit 1
