#!/usr/bin/env bash
# A short run of every fuzz target on its committed seeds (20 s each by default), for CI:
# catches a target that no longer builds, a seed that now crashes, and shallow regressions.
# Long runs are in fuzz/README.md. Usage: bash fuzz/smoke.sh [seconds per target]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-20}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo fuzz build -O
for target in $(cargo fuzz list); do
  echo "== fuzz smoke: $target (${secs} s)"
  mkdir -p "$work/$target" "corpus/$target"
  # New inputs go to the scratch directory, never into the committed seeds.
  if ! nice -n 19 cargo fuzz run -O "$target" "$work/$target" "corpus/$target" -- \
    -max_total_time="$secs" -print_final_stats=1 >"$work/$target.log" 2>&1; then
    tail -60 "$work/$target.log"
    echo "fuzz smoke: $target FAILED (the crashing input is in fuzz/artifacts/$target/)"
    exit 1
  fi
  grep -E "^(Done|stat::number_of_executed_units)" "$work/$target.log"
done
