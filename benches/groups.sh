#!/usr/bin/env bash
# Run I of BENCHMARKS.md: palaver-load's group scenario (50 groups of 20, every message delivered
# to the 19 other members) beside the 1:1 scenario (1,000 users in 500 pairs) at the same message
# rate, alternating on a fresh release server each, ROUNDS rounds. Each line it appends to
# "$OUT-results.jsonl" is palaver-load's report with the scenario, the round, the load average
# before and after, and the server's fan-out time and commits from its metrics (a run that fails,
# e.g. when registration meets a busy server too often, is recorded as such and the rest goes on).
# With PERF=1 the first group run is profiled (`perf record -g` on the server for 10 s of
# sending); the inclusive share of each function goes to "$OUT-perf-groups.txt".
# SCENARIOS="direct groups" chooses the scenarios of each round; FIRST_ROUND numbers the rounds
# of a later invocation on.
#
#   cargo build --release -p palaver --bin palaver -p palaver-client --bin palaver-load
#   PERF=1 benches/groups.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PALAVER=${PALAVER:-target/release/palaver}
LOAD=${LOAD:-target/release/palaver-load}
PORT=${PORT:-27411}         # loopback, below the ephemeral range, as in compare.sh
METRICS_PORT=$((PORT + 1))
SECS=${SECS:-20}
RATE=${RATE:-1}             # messages per second per user; 1,000 users in both scenarios
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-benches/results/run-i}
WORK=$(mktemp -d)
pid=""
stop_server() {
  if [[ -n "$pid" ]]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
  fi
}
trap 'stop_server; rm -rf "$WORK"' EXIT
ulimit -n "$(ulimit -Hn)"

declare -A SCENARIO=(
  [direct]="${DIRECT:---users 1000}"
  [groups]="${GROUPS_ARGS:---groups 50 --group-size 20}"
)

metric() { # name: the value of one unlabelled series of the server's metrics
  curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'
}

start_server() { # data directory
  env PALAVER_SEND_RATE_PER_SEC=1000000 PALAVER_SEND_BURST=1000000 \
    PALAVER_CONNECTIONS_PER_ADDRESS=1000000 PALAVER_REGISTRATIONS_PER_ADDRESS=1000000 \
    PALAVER_JWT_SECRET=groups-secret-groups-secret-groups-secret RUST_LOG=warn \
    PALAVER_LISTEN=127.0.0.1:$PORT PALAVER_METRICS_LISTEN=127.0.0.1:$METRICS_PORT \
    PALAVER_DATA_DIR="$1" "$PALAVER" serve >>"$WORK/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return 0
    sleep 0.1
  done
  echo "server did not start" >&2
  exit 1
}

profile_sending() { # once messages flow, 10 s of the server's stacks
  until [[ "$(metric palaver_messages_total)" =~ ^[1-9] ]]; do sleep 0.5; done
  sleep 2
  perf record -g -p "$pid" -o "$WORK/perf.data" -- sleep 10 >/dev/null 2>&1
  perf report -i "$WORK/perf.data" --sort symbol --stdio 2>/dev/null \
    --children -g none --percent-limit 0.3 | grep -v '^$' | cut -c1-200 >"$OUT-perf-groups.txt" || true
}

FIRST_ROUND=${FIRST_ROUND:-1}
for round in $(seq "$FIRST_ROUND" $((FIRST_ROUND + ROUNDS - 1))); do
  for kind in ${SCENARIOS:-direct groups}; do
    start_server "$WORK/data-$kind-$round"
    profiler=""
    if [[ "${PERF:-0}" == 1 && "$kind" == groups && "$round" == "$FIRST_ROUND" ]]; then
      profile_sending &
      profiler=$!
    fi
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    # shellcheck disable=SC2086
    report=$("$LOAD" --url "http://127.0.0.1:$PORT" --server-pid "$pid" ${SCENARIO[$kind]} \
      --rate "$RATE" --secs "$SECS" --concurrency 8 2>"$WORK/load.err") ||
      report="{\"failed\":\"$(tr -d '"\\' <"$WORK/load.err" | head -c 300)\"}"
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    if [[ -n "$profiler" ]]; then wait "$profiler" || true; fi
    fanout_s=$(metric palaver_fanout_seconds_sum)
    fanouts=$(metric palaver_fanout_seconds_count)
    commits=$(metric palaver_commit_seconds_count)
    line="{\"scenario\":\"$kind\",\"round\":$round,\"load_before\":\"$load_before\",\"load_after\":\"$load_after\",\"fanout_s\":${fanout_s:-null},\"fanouts\":${fanouts:-null},\"commits\":${commits:-null},\"report\":$report}"
    echo "$line" | tee -a "$OUT-results.jsonl"
    stop_server
  done
done
