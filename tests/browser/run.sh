#!/usr/bin/env bash
# Runs the browser suite: the web client in Debian's Chromium (playwright-core) and its
# Socket.IO client under Node, against target/release/palaver. Installs what is missing first:
# Chromium from Debian's packages (never a browser download from npm), the npm packages from
# the lock file, and the release binary (rebuilt when web/ or the code changed: the files are
# embedded at build time).
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing Debian's chromium"
  sudo_if_needed=()
  [ "$(id -u)" -eq 0 ] || sudo_if_needed=(sudo)
  "${sudo_if_needed[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo_if_needed[@]}" apt-get install -y chromium
fi

# tests/run.sh has just built the binary (with `cargo test`) and says so; run alone, this script
# builds it.
if [ "${PALAVER_BINARY_BUILT:-}" != 1 ]; then
  echo "== cargo build --release --bin palaver"
  (cd ../.. && cargo build --release --bin palaver)
fi

npm ci --no-audit --no-fund
npm test
