#!/usr/bin/env bash
# Run K of BENCHMARKS.md: the server's memory under churn, sampled every 5 s for the whole run.
# Starts a release server on a fresh data directory with the send and connection limits raised
# (as compare.sh raises them), drives it with palaver-load's churn scenario, and writes
#   "$OUT.rss"   seconds since start, RSS in KiB, then the scrape's sockets and jemalloc's
#                allocated / resident / retained MiB (palaver_heap_*), one line per sample
#   "$OUT.json"  palaver-load's report (acks within 1 s, recovered, presence per socket, ...)
# USERS, TABS, CHURN (seconds between cuts of a socket), RATE (messages per second per user),
# SECS (seconds of churn) and SCOPE (all|contacts) choose the scenario; the defaults are issue
# 15's goal: 10,000 connections (5,000 users x 2 tabs), each cut about every 30 s.
#
#   cargo build --release -p palaver --bin palaver -p palaver-client --bin palaver-load
#   SCOPE=all benches/churn-memory.sh
#   SCOPE=contacts OUT=benches/results/run-k-contacts benches/churn-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PALAVER=${PALAVER:-target/release/palaver}
LOAD=${LOAD:-target/release/palaver-load}
PORT=${PORT:-27421}         # loopback, below the ephemeral range, as in compare.sh
METRICS_PORT=$((PORT + 1))
USERS=${USERS:-5000}
TABS=${TABS:-2}
CHURN=${CHURN:-30}
RATE=${RATE:-0.2}
SECS=${SECS:-600}
SCOPE=${SCOPE:-all}
OUT=${OUT:-benches/results/run-k-$SCOPE}
DATA=$(mktemp -d)
LOG=$(mktemp --suffix=.palaver.log)   # the server's log, kept after the run
pid=""
sampler=""
cleanup() {
  [[ -n "$sampler" ]] && kill "$sampler" 2>/dev/null || true
  if [[ -n "$pid" ]]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$DATA"
  echo "server log: $LOG" >&2
}
trap cleanup EXIT

PALAVER_SEND_RATE_PER_SEC=1000000 PALAVER_SEND_BURST=1000000 \
  PALAVER_CONNECTIONS_PER_ADDRESS=1000000 PALAVER_REGISTRATIONS_PER_ADDRESS=1000000 \
  PALAVER_JWT_SECRET=churn-memory-secret-churn-memory-secret PALAVER_PRESENCE_SCOPE="$SCOPE" \
  RUST_LOG=warn PALAVER_LISTEN="127.0.0.1:$PORT" PALAVER_DATA_DIR="$DATA" \
  "$PALAVER" serve --metrics-listen "127.0.0.1:$METRICS_PORT" >"$LOG" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/health" 2>/dev/null && break
  sleep 0.1
done

sample() {
  local start
  start=$(date +%s)
  while kill -0 "$pid" 2>/dev/null; do
    local rss figures
    rss=$(awk '/VmRSS/{print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    figures=$(curl -s --max-time 3 "http://127.0.0.1:$METRICS_PORT/metrics" | awk '
      /^palaver_sockets /{s=$2}
      /^palaver_heap_allocated_bytes /{a=$2/1048576}
      /^palaver_heap_resident_bytes /{r=$2/1048576}
      /^palaver_heap_retained_bytes /{t=$2/1048576}
      END{printf "sockets=%d allocated_mb=%d resident_mb=%d retained_mb=%d", s, a, r, t}')
    echo "$(($(date +%s) - start)) $rss $figures"
    sleep 5
  done
}
sample >"$OUT.rss" &
sampler=$!

"$LOAD" --url "http://127.0.0.1:$PORT" --server-pid "$pid" --users "$USERS" --tabs "$TABS" \
  --rate "$RATE" --secs "$SECS" --churn "$CHURN" | tail -1 >"$OUT.json"
cat "$OUT.json"
# RSS over the second half of the run (every socket has reconnected several times by then).
awk '{rss[NR] = $2} END {
  lo = 1e18; hi = 0
  for (i = int(NR / 2) + 1; i <= NR; i++) { if (rss[i] < lo) lo = rss[i]; if (rss[i] > hi) hi = rss[i] }
  printf "RSS over the second half of the run: %d-%d MB\n", lo / 1024, hi / 1024 }' "$OUT.rss"
