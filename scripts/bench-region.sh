#!/usr/bin/env bash
# The region benchmark (issue 3), reported, never asserted: on this machine's loopback,
#   1. a 3-node Meridian region (`meridian region start`, rf 3, durability fsync) driven by
#      `meridian bench --external` at `eventual`, then at `local_quorum` (writes, then reads of the
#      keys written), the clients dealt round-robin over the 3 nodes so all of them coordinate,
#      with where the writes' time went on the nodes (their /metrics, `--metrics-http`);
#   2. Debian's etcd (etcd-server) as a 3-member cluster, driven by `meridian bench-etcd` at the same
#      concurrency (PUTs, then linearizable ranges, over the v3 JSON gateway): a leader-based quorum
#      anchor;
# and a summary table with both sets of figures and the ratio Meridian / etcd. The region is stopped
# before etcd starts, so the two never compete for the CPU. Both systems fsync before acknowledging
# a write (Meridian's group commit under `fsync` durability; etcd's WAL, always).
#
# With --compare-auth the region then runs again with authentication off (the same configs with
# `[auth] enabled = false`, fresh data), so the cost of authentication is measured in the same run.
# With --pipeline N, both levels run once more (authentication on) with each client sending its
# operations N to a request (`meridian bench --pipeline N`); etcd's row stays one put per request.
#
# Usage: scripts/bench-region.sh [--clients 32] [--ops 300] [--value-bytes 100] [--compare-auth] [--pipeline N]
# Environment: MERIDIAN_BIN (default: build target/debug/meridian with cargo), REGION_BASE_PORT
# (default 17500: nodes on base+10i, +1, +2), ETCD_CLIENT_BASE (default 23790: members on base+i),
# ETCD_PEER_BASE (default 23800), BENCH_TIMEOUT_S (per benchmark run, default 300), KEEP=1 (keep the
# scratch directory with the logs).
# Needs etcd and etcdctl: `scripts/install-deps.sh --bench` installs etcd-server and etcd-client.
set -euo pipefail

clients=32
ops=300
value_bytes=100
compare_auth=0
pipeline=1
while (($#)); do
  case "$1" in
    --clients) clients=${2:?}; shift 2 ;;
    --ops) ops=${2:?}; shift 2 ;;
    --value-bytes) value_bytes=${2:?}; shift 2 ;;
    --compare-auth) compare_auth=1; shift ;;
    --pipeline) pipeline=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
base_port=${REGION_BASE_PORT:-17500}
etcd_client_base=${ETCD_CLIENT_BASE:-23790}
etcd_peer_base=${ETCD_PEER_BASE:-23800}
bench_timeout=${BENCH_TIMEOUT_S:-300}

for tool in etcd etcdctl timeout; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool is missing: run scripts/install-deps.sh --bench" >&2; exit 1; }
done
if [[ -z "${MERIDIAN_BIN:-}" ]]; then
  echo "building meridian (cargo build -p meridian-node)" >&2
  (cd "$root" && cargo build --quiet -p meridian-node)
  MERIDIAN_BIN=$root/target/debug/meridian
fi
meridian=$MERIDIAN_BIN

tmp=$(mktemp -d -t meridian-bench-region.XXXXXX)
region_pid=""
node_pids=()
etcd_pids=()
bench_pid=""

# Stops the region: SIGTERM to its supervisor (which SIGTERMs every node, SIGKILL after 10 s), then,
# should any node outlive it, SIGKILL by the pids the supervisor printed.
stop_region() {
  if [[ -n "$region_pid" ]]; then
    kill -TERM "$region_pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$region_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$region_pid" 2>/dev/null || true
    wait "$region_pid" 2>/dev/null || true
    region_pid=""
  fi
  local pid
  for pid in "${node_pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  node_pids=()
}

stop_etcd() {
  local pid
  for pid in "${etcd_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${etcd_pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  etcd_pids=()
}

cleanup() {
  local status=$?
  set +e
  if [[ -n "$bench_pid" ]]; then kill -TERM "$bench_pid" 2>/dev/null; wait "$bench_pid" 2>/dev/null; fi
  stop_region
  stop_etcd
  if [[ "${KEEP:-0}" == 1 || $status -ne 0 ]]; then
    echo "logs kept in $tmp" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# Runs a benchmark bounded by $bench_timeout, its table into $1 and on stdout. In the background, so
# that a signal to this script is handled at once rather than after the benchmark.
run_bench() {
  local out=$1
  shift
  timeout --kill-after=10 "$bench_timeout" "$@" >"$out" &
  bench_pid=$!
  wait "$bench_pid"
  bench_pid=""
  cat "$out"
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# "ops p50 p99 errors" of the line of a bench table that starts with $2.
figures() {
  awk -v prefix="$2" 'index($0, prefix) == 1 {
      for (i = 1; i <= NF; i++) {
        if ($i == "ops/s") ops = $(i - 1)
        if ($i == "p50") p50 = $(i + 1)
        if ($i == "p99") p99 = $(i + 1)
        if ($i == "errors)") errors = $(i - 1)
      }
      print ops, p50, p99, errors; found = 1; exit
    }
    END { if (!found) print "? ? ? ?" }' "$1"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0 && a + 0 > 0) printf "%.2f", a / b; else print "?" }'; }

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $clients clients x $ops ops, ${value_bytes}-byte values"

# --- 1. Meridian: a 3-node region --------------------------------------------------------------
endpoints=""
http=""
for i in 1 2 3; do
  endpoints+="${endpoints:+,}127.0.0.1:$((base_port + 10 * i))"
  http+="${http:+,}127.0.0.1:$((base_port + 10 * i + 1))"
done
# Starts the region in $tmp/region and waits until it is ready: `region start` creates it the first
# time (certificates, configs with authentication on) and reuses its configs afterwards.
start_region() {
  "$meridian" region start --dir "$tmp/region" --nodes 3 --rf 3 --base-port "$base_port" --durability fsync \
    --ready-timeout-secs 60 >"$tmp/region.log" 2>&1 &
  region_pid=$!
  for _ in $(seq 900); do
    grep -q "region ready" "$tmp/region.log" && break
    kill -0 "$region_pid" 2>/dev/null || { echo "the region failed to start:" >&2; tail -n 30 "$tmp/region.log" >&2; exit 1; }
    sleep 0.1
  done
  grep -q "region ready" "$tmp/region.log" || { echo "the region was not ready in 90 s" >&2; tail -n 30 "$tmp/region.log" >&2; exit 1; }
  # The node pids from the supervisor's table (NODE ZONE CLIENT HTTP PEER PID LOG), for the fallback.
  mapfile -t node_pids < <(awk '$1 ~ /^n[0-9]+$/ && $6 ~ /^[0-9]+$/ { print $6 }' "$tmp/region.log")
  echo "region ready: nodes on $endpoints (pids ${node_pids[*]:-?})"
}

# Runs both levels against the region; $1 names the arm ("", "-noauth" or "-pipelined") in the
# result files.
bench_region() {
  local level plain="" per_request=1
  [[ "$1" == "-noauth" ]] && plain=--plain-metrics
  [[ "$1" == "-pipelined" ]] && per_request=$pipeline
  for level in eventual local_quorum; do
    echo
    echo "== meridian bench --external, $level${1:+ ($1)}, clients over $endpoints"
    run_bench "$tmp/meridian-$level$1.txt" "$meridian" bench --external --endpoints "$endpoints" \
      --ca-cert "$tmp/region/certs/ca.crt" --cert "$tmp/region/certs/admin.crt" --key "$tmp/region/certs/admin.key" \
      --consistency "$level" --skip-baseline --metrics-http "$http" $plain --pipeline "$per_request" \
      --clients "$clients" --ops "$ops" --value-bytes "$value_bytes"
  done
}

echo "starting a 3-node Meridian region in $tmp/region (base port $base_port)"
start_region
bench_region ""
((pipeline > 1)) && bench_region "-pipelined"
echo
echo "stopping the region"
stop_region
if ((compare_auth)); then
  # Loopback only, so the nodes accept authentication off; fresh data so both arms start empty.
  echo
  echo "restarting the region with authentication off (fresh data)"
  for node_dir in "$tmp"/region/n*/; do
    rm -rf "$node_dir/data"
    sed -i '/^\[auth\]/,/^\[/ s/^enabled = true$/enabled = false/' "$node_dir/meridian.toml"
    grep -q '^enabled = false$' "$node_dir/meridian.toml" || { echo "could not turn authentication off in $node_dir" >&2; exit 1; }
  done
  start_region
  bench_region "-noauth"
  echo
  echo "stopping the region"
  stop_region
fi

# --- 2. etcd: a 3-member cluster ---------------------------------------------------------------
etcd_version=$(etcd --version | awk '/etcd Version/ { print $3 }')
cluster=""
etcd_endpoints=""
for i in 1 2 3; do
  for port in $((etcd_client_base + i)) $((etcd_peer_base + i)); do
    if port_taken "$port"; then echo "port $port is taken (set ETCD_CLIENT_BASE / ETCD_PEER_BASE)" >&2; exit 1; fi
  done
  cluster+="${cluster:+,}e$i=http://127.0.0.1:$((etcd_peer_base + i))"
  etcd_endpoints+="${etcd_endpoints:+,}http://127.0.0.1:$((etcd_client_base + i))"
done
echo
echo "starting a 3-member etcd $etcd_version cluster in $tmp/etcd (clients on $etcd_endpoints)"
mkdir -p "$tmp/etcd"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$tmp/etcd/e$i" \
    --listen-client-urls "http://127.0.0.1:$((etcd_client_base + i))" \
    --advertise-client-urls "http://127.0.0.1:$((etcd_client_base + i))" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_peer_base + i))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_peer_base + i))" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "meridian-bench-$$" \
    --logger zap --log-level warn >"$tmp/etcd/e$i.log" 2>&1 &
  etcd_pids+=($!)
done
healthy=0
for _ in $(seq 60); do
  if ETCDCTL_API=3 timeout 5 etcdctl --endpoints "$etcd_endpoints" --command-timeout 3s endpoint health \
    >"$tmp/etcd/health.txt" 2>&1; then
    healthy=1
    break
  fi
  for pid in "${etcd_pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "an etcd member exited:" >&2; tail -n 5 "$tmp"/etcd/e*.log >&2; exit 1; }
  done
  sleep 1
done
((healthy)) || { echo "etcd was not healthy in 60 s:" >&2; cat "$tmp/etcd/health.txt" >&2; exit 1; }
echo "etcd healthy"
echo
echo "== meridian bench-etcd, clients over $etcd_endpoints"
run_bench "$tmp/etcd.txt" "$meridian" bench-etcd --endpoints "$etcd_endpoints" \
  --clients "$clients" --ops "$ops" --value-bytes "$value_bytes"
echo
echo "stopping etcd"
stop_etcd

# --- 3. Summary ----------------------------------------------------------------------------------
read -r ew ew50 ew99 ewerr < <(figures "$tmp/etcd.txt" "etcd put")
read -r er er50 er99 ererr < <(figures "$tmp/etcd.txt" "etcd range")
echo
echo "Region benchmark: Meridian 3-node region (rf 3) vs etcd $etcd_version 3-member cluster, loopback,"
echo "$clients clients x $ops ops, ${value_bytes}-byte values; latencies in ms; ratio = Meridian ops/s / etcd ops/s."
echo "Durability: both fsync before acknowledging a write (Meridian storage.durability = fsync, group commit;"
echo "etcd fsyncs its WAL on every commit). Reads: etcd linearizable (ReadIndex through the leader)."
printf '%-26s %12s %8s %8s %12s %8s %8s %8s %8s %7s\n' \
  LEVEL "WRITE OPS/S" P50 P99 "READ OPS/S" P50 P99 "W RATIO" "R RATIO" ERRORS
arms=("")
((compare_auth)) && arms+=("-noauth")
((pipeline > 1)) && arms+=("-pipelined")
for arm in "${arms[@]}"; do
  for level in eventual local_quorum; do
    read -r w w50 w99 werr < <(figures "$tmp/meridian-$level$arm.txt" "meridian write")
    read -r r r50 r99 rerr < <(figures "$tmp/meridian-$level$arm.txt" "meridian read")
    label="meridian $level"
    case "$arm" in
      "") ((compare_auth)) && label+=" auth" ;;
      -noauth) label+=" noauth" ;;
      -pipelined) label+=" -P $pipeline" ;;
    esac
    printf '%-26s %12s %8s %8s %12s %8s %8s %8s %8s %7s\n' "$label" "$w" "$w50" "$w99" "$r" "$r50" "$r99" \
      "$(ratio "$w" "$ew")" "$(ratio "$r" "$er")" "$((werr + rerr))"
  done
done
printf '%-26s %12s %8s %8s %12s %8s %8s %8s %8s %7s\n' "etcd (linearizable)" "$ew" "$ew50" "$ew99" "$er" "$er50" "$er99" \
  "1.00" "1.00" "$((ewerr + ererr))"
((pipeline > 1)) && echo "(-P $pipeline: each client sent its operations $pipeline to a request; latencies are per request, etcd's one put each)"
echo "(figures from one run on a shared machine: compare ratios within a run, not absolute numbers across runs)"
