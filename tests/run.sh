#!/usr/bin/env bash
# Runs every test palaver has, from a fresh clone, with nothing installed but Rust and Node:
# the unit, property and integration tests of the whole workspace (release profile, so argon2
# and redb run at real speed and the binary the end-to-end suite needs is built once), then the
# end-to-end suite in tests/e2e against target/release/palaver with the real socket.io-client,
# then the browser suite in tests/browser (the web client in Debian's Chromium; it installs
# Chromium with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (workspace, release)"
cargo test --release --workspace

echo "== end-to-end suite (socket.io-client from npm)"
cargo build --release --bin palaver
cd tests/e2e
npm ci --no-audit --no-fund
npm test

echo "== browser suite (the web client in Chromium)"
cd ../browser
bash run.sh
