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
npm test

echo "== browser suite (the web client in Chromium)"
cd ../browser
PALAVER_BINARY_BUILT=1 bash run.sh
