#!/usr/bin/env bash
# The demo: three cache nodes sharing one Redis (REDIS_URL if set, else a private
# redis-server it starts). Installs redis-server if needed; without one the demo still runs,
# L1-only, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${REDIS_URL:-}" ]; then
  scripts/ensure-redis.sh || echo "continuing without Redis: the demo will run L1-only" >&2
fi
exec cargo run --release --example demo
