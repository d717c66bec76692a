#!/usr/bin/env bash
# palaver against the Node peer (shared/anchors/node-contract) and the bare WebSocket relay
# (shared/anchors/ws-relay), side by side in one run, under the same load, one server at a time.
#
#   benches/compare.sh                      # every scenario
#   SCENARIOS="latency memory" benches/compare.sh
#
# Scenarios: saturation (ramp until loss or p99 >= 50 ms; palaver, Node, relay, and palaver with
# commits that skip fsync: the durability cost), latency (1,000 users x 1 msg/s), memory (10,000
# idle sockets), start (1,000,000 stored messages: cold start to /health, and after kill -9).
# palaver-load drives palaver and Node; the relay is driven by its own `pairs` client. Results go
# to $WORK/results.jsonl (one JSON line per measurement; every ramp step in $WORK/ramp-*.jsonl)
# and a summary with the ratios is printed.
# Every process started here is stopped on exit, also on error or Ctrl-C.
#
# Settings (environment): SHARED (default ../shared next to the repo), WORK (scratch directory),
# SECS (seconds per load step, default 5), SAT_USERS (200), SAT_RATE (1), LAT_USERS (1000),
# LAT_SECS (10), IDLE (10000), IDLE_USERS (100), SEED_MESSAGES (1000000), SKIP_BUILD=1 to use
# the binaries already built, NODE_DIR (an installed copy of node-contract to reuse),
# RELAY_TARGET (cargo target dir for ws-relay, default /tmp/ws-relay-target).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$REPO/../shared}
WORK=${WORK:-$(mktemp -d /tmp/palaver-compare.XXXXXX)}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
RELAY_TARGET=${RELAY_TARGET:-/tmp/ws-relay-target}
SCENARIOS=${SCENARIOS:-saturation latency memory start}
SECS=${SECS:-5}
SAT_USERS=${SAT_USERS:-200}
SAT_RATE=${SAT_RATE:-1}
LAT_USERS=${LAT_USERS:-1000}
LAT_SECS=${LAT_SECS:-10}
IDLE=${IDLE:-10000}
IDLE_USERS=${IDLE_USERS:-100}
SEED_MESSAGES=${SEED_MESSAGES:-1000000}
# Ports far from the defaults, so a server someone else runs on this machine is never measured,
# and below Linux's ephemeral range (32768-60999): the load generator's thousands of client
# sockets once took 47402 just before the Node peer was to listen on it (EADDRINUSE).
P_PORT=${P_PORT:-27401}
N_PORT=${N_PORT:-27402}
R_PORT=${R_PORT:-27403}
# The contract's send limits, raised so that the servers, not the limiter, are measured.
# Every load client comes from 127.0.0.1, so the per-address limits are raised too.
LIMITS=(PALAVER_SEND_RATE_PER_SEC=1000000 PALAVER_SEND_BURST=1000000
  PALAVER_CONNECTIONS_PER_ADDRESS=1000000 PALAVER_REGISTRATIONS_PER_ADDRESS=1000000)
JWT=(PALAVER_JWT_SECRET=compare-secret-compare-secret-compare-secret)

mkdir -p "$WORK"
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do
    kill -9 "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"/data-*
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '\n== %s\n' "$*" >&2; }

# The fd limit: 10,000 idle sockets need 10,000 descriptors in the server and in the client.
ulimit -n "$(ulimit -Hn)"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  log "building palaver, palaver-load, bench-server, ws-relay"
  # One cargo call each: in one call the example's dev-dependencies (palaver's `testing` feature
  # among them) would be unified into the palaver binary measured here.
  (cd "$REPO" && cargo build --release --bin palaver && cargo build --release -p palaver-client &&
    cargo build --release --example bench-server)
  # Built from a copy: cargo writes a Cargo.lock next to the manifest, and shared/ is read-only.
  rm -rf "$WORK/ws-relay" && cp -r "$SHARED/anchors/ws-relay" "$WORK/ws-relay" && chmod -R u+w "$WORK/ws-relay"
  cargo build --release --manifest-path "$WORK/ws-relay/Cargo.toml" --target-dir "$RELAY_TARGET"
fi
PALAVER=$TARGET/release/palaver
LOAD=$TARGET/release/palaver-load
BENCH_SERVER=$TARGET/release/examples/bench-server
RELAY=$RELAY_TARGET/release/relay
PAIRS=$RELAY_TARGET/release/pairs

if [[ -z ${NODE_DIR:-} ]]; then
  NODE_DIR=$WORK/node-contract
  if [[ ! -d $NODE_DIR/node_modules ]]; then
    log "installing the Node peer in $NODE_DIR"
    rm -rf "$NODE_DIR" && cp -r "$SHARED/anchors/node-contract" "$NODE_DIR"
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund >&2)
  fi
fi

wait_health() { # port
  for _ in $(seq 1 600); do
    curl -fsS -o /dev/null "http://127.0.0.1:$1/health" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "no /health on port $1" >&2
  return 1
}

stop() { # pid: SIGTERM, then SIGKILL after 5 s
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.05
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

SERVER_PID=
start_server() { # kind data-dir: palaver | palaver-none | node | relay
  local kind=$1 data=$2
  [[ -n $data ]] && mkdir -p "$data"
  case $kind in
    palaver)
      env "${LIMITS[@]}" "${JWT[@]}" RUST_LOG=warn PALAVER_LISTEN=127.0.0.1:$P_PORT \
        PALAVER_DATA_DIR="$data" "$PALAVER" serve >>"$WORK/$kind.log" 2>&1 &
      SERVER_PID=$!; PORT=$P_PORT ;;
    palaver-none)
      env "${LIMITS[@]}" "${JWT[@]}" RUST_LOG=warn PALAVER_LISTEN=127.0.0.1:$P_PORT \
        PALAVER_DATA_DIR="$data" "$BENCH_SERVER" serve-none >>"$WORK/$kind.log" 2>&1 &
      SERVER_PID=$!; PORT=$P_PORT ;;
    node)
      (cd "$NODE_DIR" && exec env "${LIMITS[@]}" "${JWT[@]}" PALAVER_LISTEN=127.0.0.1:$N_PORT \
        PALAVER_DATA_DIR="$data" node server.js >>"$WORK/$kind.log" 2>&1) &
      SERVER_PID=$!; PORT=$N_PORT ;;
    relay)
      "$RELAY" 127.0.0.1:$R_PORT >>"$WORK/$kind.log" 2>&1 &
      SERVER_PID=$!; PORT=$R_PORT ;;
  esac
  PIDS+=("$SERVER_PID")
  if [[ $kind == relay ]]; then sleep 0.5; else wait_health "$PORT"; fi
}

record() { # scenario server json-line
  local line
  line=$(jq -c --arg s "$1" --arg k "$2" '. + {scenario: $s, server: $k}' <<<"$3")
  echo "$line" >>"$RESULTS"
  echo "$line" >&2
}

# One load step against the relay with its own client; adds lost like palaver-load's line.
relay_step() { # users rate secs
  "$PAIRS" "ws://127.0.0.1:$R_PORT" "$1" "$2" "$3" | jq -c '. + {lost: (.sent - .delivered)}'
}

# The relay's ramp, with palaver-load's rule: the highest step with nothing lost and p99 < 50 ms,
# stopping after two failing steps in a row.
relay_ramp() { # users rate secs
  local rate=$2 best='' failures=0 line
  for _ in $(seq 1 20); do
    line=$(relay_step "$1" "$rate" "$3")
    echo "$line" >>"$WORK/ramp-relay.jsonl"
    if jq -e '.lost <= 0 and .p99_ms < 50' <<<"$line" >/dev/null; then
      best=$line; failures=0
    else
      failures=$((failures + 1))
      [[ $failures == 2 ]] && break
    fi
    rate=$(jq -n "($rate * 1.5 * 100 | round) / 100")
    sleep 1
  done
  echo "${best:-"{}"}"
}

disk_probe() {
  python3 - "$WORK" <<'EOF'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT)
times = []
for _ in range(100):
    os.write(fd, b"x" * 4096)
    t = time.perf_counter(); os.fsync(fd); times.append((time.perf_counter() - t) * 1000)
os.close(fd); os.unlink(path)
times.sort()
print('{"fsync_p50_ms": %.2f, "fsync_p99_ms": %.2f}' % (times[49], times[98]))
EOF
}

log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
record machine disk "$(disk_probe)"

for scenario in $SCENARIOS; do
  case $scenario in
  saturation)
    for kind in palaver palaver-none node; do
      log "saturation: $kind, $SAT_USERS users, ramp from $SAT_RATE msg/s per user"
      start_server "$kind" "$WORK/data-$kind-sat"
      # The last line is the best step; none when not even the first step passed.
      line=$("$LOAD" --url "http://127.0.0.1:$PORT" --users "$SAT_USERS" --rate "$SAT_RATE" \
        --secs "$SECS" --ramp --server-pid "$SERVER_PID" | tee "$WORK/ramp-$kind.jsonl" | tail -1) || line='{}'
      record saturation "$kind" "${line:-"{}"}"
      stop "$SERVER_PID"
    done
    log "saturation: relay, $SAT_USERS users"
    start_server relay ""
    # Same grid of rates (x1.5 per step), entered 8 steps up: the relay passes those anyway.
    record saturation relay "$(relay_ramp "$SAT_USERS" "$(jq -n "$SAT_RATE * 1.5 * 1.5 * 1.5 * 1.5 * 1.5 * 1.5 * 1.5 * 1.5 * 100 | round / 100")" "$SECS")"
    stop "$SERVER_PID"
    ;;
  latency)
    for kind in palaver node; do
      log "latency: $kind, $LAT_USERS users x 1 msg/s"
      start_server "$kind" "$WORK/data-$kind-lat"
      record latency "$kind" "$("$LOAD" --url "http://127.0.0.1:$PORT" --users "$LAT_USERS" \
        --rate 1 --secs "$LAT_SECS" --server-pid "$SERVER_PID")"
      stop "$SERVER_PID"
    done
    log "latency: relay"
    start_server relay ""
    record latency relay "$(relay_step "$LAT_USERS" 1 "$LAT_SECS")"
    stop "$SERVER_PID"
    ;;
  memory)
    for kind in palaver node; do
      log "memory: $kind, $IDLE idle sockets of $IDLE_USERS users"
      start_server "$kind" "$WORK/data-$kind-mem"
      record memory "$kind" "$("$LOAD" --url "http://127.0.0.1:$PORT" --idle "$IDLE" \
        --users "$IDLE_USERS" --secs 5 --concurrency 64 --server-pid "$SERVER_PID")"
      stop "$SERVER_PID"
    done
    ;;
  start)
    log "start: seeding $SEED_MESSAGES messages for palaver and for Node"
    t0=$(date +%s%N)
    "$BENCH_SERVER" seed "$WORK/data-palaver-start" "$SEED_MESSAGES"
    t1=$(date +%s%N)
    NODE_PATH=$NODE_DIR/node_modules node "$REPO/benches/tools/seed-node.js" "$WORK/data-node-start" "$SEED_MESSAGES"
    t2=$(date +%s%N)
    record start seed "$(jq -nc --argjson p $(((t1 - t0) / 1000000)) --argjson n $(((t2 - t1) / 1000000)) \
      --argjson m "$SEED_MESSAGES" '{messages: $m, palaver_seed_ms: $p, node_seed_ms: $n, palaver_db_mb: '"$(du -m "$WORK/data-palaver-start" | tail -1 | cut -f1)"', node_db_mb: '"$(du -m "$WORK/data-node-start" | tail -1 | cut -f1)"'}')"
    for kind in palaver node; do
      data=$WORK/data-$kind-start
      port=$P_PORT; [[ $kind == node ]] && port=$N_PORT
      if [[ $kind == palaver ]]; then
        cmd=(env "${LIMITS[@]}" "${JWT[@]}" RUST_LOG=warn PALAVER_LISTEN=127.0.0.1:$port PALAVER_DATA_DIR="$data" "$PALAVER" serve)
      else
        cmd=(env "${LIMITS[@]}" "${JWT[@]}" PALAVER_LISTEN=127.0.0.1:$port PALAVER_DATA_DIR="$data" node "$NODE_DIR/server.js")
      fi
      timed_start() { # label
        local ms
        ms=$(python3 "$REPO/benches/tools/start-time.py" "http://127.0.0.1:$port" "$WORK/pid" "$WORK/$kind-start.log" -- "${cmd[@]}")
        SERVER_PID=$(cat "$WORK/pid"); PIDS+=("$SERVER_PID")
        record start "$kind" "$(jq -nc --arg what "$1" --argjson ms "$ms" --argjson rss "$(grep VmRSS /proc/$SERVER_PID/status | awk '{print $2/1024}')" \
          '{what: $what, to_health_ms: $ms, server_rss_mb: $rss}')"
      }
      log "start: $kind, clean start with $SEED_MESSAGES messages"
      timed_start clean
      stop "$SERVER_PID"
      timed_start "clean again"
      # Some traffic, so the last commits before the crash are the server's own.
      "$LOAD" --url "http://127.0.0.1:$port" --users 20 --rate 10 --secs 2 >/dev/null
      kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
      log "start: $kind, restart after kill -9 under load"
      timed_start "after kill -9"
      kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
      log "start: $kind, restart after kill -9 with no write since start"
      timed_start "after kill -9, idle"
      stop "$SERVER_PID"
    done
    if grep -q "repairing" "$WORK/palaver-start.log"; then
      record start palaver-repair "$(jq -nc --arg lines "$(grep -c repairing "$WORK/palaver-start.log")" '{repair_log_lines: $lines}')"
    fi
    ;;
  esac
done

log "summary (ratios are palaver / Node and palaver / relay, from this run)"
python3 - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def get(scenario, server):
    return next((r for r in rows if r.get("scenario") == scenario and r.get("server") == server), None)
def ratio(a, b):
    return f"{a / b:.1f}x" if a and b else "n/a"
sat = {k: get("saturation", k) for k in ("palaver", "palaver-none", "node", "relay")}
if sat["palaver"]:
    p, n, r, none = (sat[k] and sat[k].get("delivered_per_s") for k in ("palaver", "node", "relay", "palaver-none"))
    print(f"saturation delivered/s: palaver {p}  node {n}  relay {r}  palaver(no fsync) {none}")
    print(f"  palaver/node {ratio(p, n)}   palaver/relay {p / r * 100 if p and r else 0:.1f}%   Immediate/None {p / none * 100 if p and none else 0:.0f}%")
lat = {k: get("latency", k) for k in ("palaver", "node", "relay")}
if lat["palaver"]:
    for k, v in lat.items():
        if v:
            print(f"latency 1 msg/s/user {k:8} p50 {v['p50_ms']} ms  p99 {v['p99_ms']} ms  max {v['max_ms']} ms  lost {v.get('lost')}")
for k in ("palaver", "node"):
    v = get("memory", k)
    if v:
        print(f"memory {k:8} {v['idle']} idle sockets: {v.get('rss_per_conn_kib')} KiB per connection (RSS {v.get('server_rss_before_mb')} -> {v.get('server_rss_mb')} MB)")
for r in rows:
    if r.get("scenario") == "start" and r.get("server") in ("palaver", "node"):
        print(f"start {r['server']:8} {r['what']:22} {r['to_health_ms']} ms to /health")
EOF
echo "results: $RESULTS" >&2
