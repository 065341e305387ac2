#!/usr/bin/env bash
# The test command: installs redis-server and prometheus (for tests/dashboard.rs) if needed,
# then runs every test (unit, integration, doc tests including the README's examples). Each
# integration test starts its own private redis-server (and prometheus) on a free loopback
# port and stops it when done.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-redis.sh
scripts/ensure-prometheus.sh

# --all-features: the admin tooling and the `tiered-cache-admin` binary (feature `cli`) are
# tested too (tests/cli.rs runs the built binary).
cargo test --doc --all-features --quiet
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-features --no-fail-fast
else
  echo "(cargo-nextest not found: using cargo test)" >&2
  cargo test --all-features --no-fail-fast
fi
