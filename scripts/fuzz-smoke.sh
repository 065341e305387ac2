#!/usr/bin/env bash
# A bounded fuzz run of every target in fuzz/ over the corpus kept in fuzz/corpus: the kept
# corpus is only read, new inputs go to a temporary directory. FUZZ_SECS per target (default
# 10). Exits non-zero, with the fuzzer's report, on the first crash.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
if ! command -v cargo-fuzz >/dev/null; then
  echo "installing cargo-fuzz (crates.io)"
  cargo install cargo-fuzz --locked --version 0.13.2 --quiet
fi
# libFuzzer's coverage flags are unstable options: stable rustc takes them with
# RUSTC_BOOTSTRAP. No sanitizer (-s none): a panic or an abort is what is looked for.
export RUSTC_BOOTSTRAP=1
secs=${FUZZ_SECS:-10}
cargo fuzz build -s none
# An assignment, so a failing listing stops the script (a loop over `$(...)` would not).
targets=$(cargo fuzz list)
if [ -z "$targets" ]; then
  echo "fuzz: no targets listed" >&2
  exit 1
fi
for target in $targets; do
  out=$(mktemp -d)
  log=$(mktemp)
  if cargo fuzz run -s none "$target" "$out" "corpus/$target" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 >"$log" 2>&1; then
    echo "fuzz $target: $(grep -E '^Done' "$log" | tail -1)"
  else
    tail -40 "$log"
    rm -rf "$out"
    echo "fuzz $target: failed (a crash leaves its input under fuzz/artifacts/$target)" >&2
    exit 1
  fi
  rm -rf "$out" "$log"
done
