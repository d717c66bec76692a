#!/usr/bin/env bash
# Runs every test of palaver's workspace from a fresh clone, with nothing installed but Rust and
# Node: the unit, property and integration tests (release profile, so argon2 and redb run at real
# speed), then the end-to-end suite in tests/e2e against target/release/palaver with the real
# socket.io-client, then the browser suite in tests/browser (the web client in Debian's Chromium;
# it installs Chromium with apt-get when missing). The simulation has its own tests, run from
# sim/ (sim/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (workspace, release)"
cargo test --release --workspace

# The binary under test is the one `cargo test` just built for the integration tests: the same
# main.rs and library as `cargo build --release`. Its library also has the `testing` feature's
# functions, which main.rs never calls (none is linked in), and some dependencies carry features
# the dev-dependencies add; building it again without them would recompile the library and
# those dependencies (BENCHMARKS.md, "Build and CI time") to test the same code.
echo "== end-to-end suite (socket.io-client from npm)"
cd tests/e2e
npm ci --no-audit --no-fund
# The suite's servers log at debug level into a directory of their own, where the harness also
# lists every token and password it sent (harness.mjs, PALAVER_E2E_LOG_DIR): none may be logged.
e2e_logs=$(mktemp -d)
PALAVER_E2E_LOG_DIR="$e2e_logs" RUST_LOG=debug npm test
if [ ! -s "$e2e_logs/secrets.txt" ] || ! ls "$e2e_logs"/server-*.log > /dev/null; then
  echo "FAILED: the e2e harness recorded no secrets or no server logs in $e2e_logs"
  exit 1
fi
if grep -F -q -f "$e2e_logs/secrets.txt" "$e2e_logs"/server-*.log; then
  echo "FAILED: a token or password the e2e suite used is in a server's log:"
  grep -F -o -h -f "$e2e_logs/secrets.txt" "$e2e_logs"/server-*.log | sort -u | head -5
  exit 1
fi
echo "no token or password in the e2e servers' logs ($(wc -l < "$e2e_logs/secrets.txt") secrets, \
$(cat "$e2e_logs"/server-*.log | wc -l) log lines)"
rm -rf "$e2e_logs"

echo "== browser suite (the web client in Chromium)"
cd ../browser
PALAVER_BINARY_BUILT=1 bash run.sh
