#!/usr/bin/env bash
# Backup and restore figures (issue 15), reported, never asserted: on this machine's loopback,
#   1. one node (`meridian serve`, durability fsync) loaded with KEYS 100-byte registers by
#      `meridian bench --external`;
#   2. `meridian backup DIR` of the live node (a full backup), then KEYS/100 more writes and a second
#      backup into the same folder (incremental: only table files not already there are copied),
#      and a third with no write in between;
#   3. `meridian restore DIR --data-dir NEW`, then a node started on NEW and the backed-up keys counted
#      through `meridian status` (RocksDB's estimate) and one read back;
# with wall times and sizes (data dir, backup folder, bytes copied) in a summary.
#
# Usage: scripts/bench-backup.sh [--keys 1000000] [--clients 64]
# Environment: MERIDIAN_BIN (default: build target/debug/meridian with cargo), BACKUP_BASE_PORT
# (default 17600), KEEP=1 (keep the scratch directory).
set -euo pipefail

keys=1000000
clients=64
while (($#)); do
  case "$1" in
    --keys) keys=${2:?}; shift 2 ;;
    --clients) clients=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
port=${BACKUP_BASE_PORT:-17600}
if [[ -z "${MERIDIAN_BIN:-}" ]]; then
  echo "building meridian (cargo build -p meridian-node)" >&2
  (cd "$root" && cargo build --quiet -p meridian-node)
  MERIDIAN_BIN=$root/target/debug/meridian
fi
meridian=$MERIDIAN_BIN
tmp=$(mktemp -d -t meridian-bench-backup.XXXXXX)
node_pid=""
cleanup() {
  [[ -n "$node_pid" ]] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null || true
  if [[ "${KEEP:-0}" == 1 ]]; then echo "scratch kept in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

start_node() { # data dir, log name
  cat >"$tmp/$2.toml" <<EOF
data_dir = "$1"
[listen]
client = "127.0.0.1:$port"
http = "127.0.0.1:$((port + 1))"
EOF
  MERIDIAN_LOG=warn "$meridian" serve --config "$tmp/$2.toml" >"$tmp/$2.log" 2>&1 &
  node_pid=$!
  for _ in $(seq 1 100); do
    [[ -f "$1/tls/node.crt" ]] && "$meridian" status --endpoint "127.0.0.1:$port" --ca-cert "$1/tls/node.crt" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "the node did not start; its log:" >&2; cat "$tmp/$2.log" >&2; exit 1
}
stop_node() { kill "$node_pid"; wait "$node_pid" 2>/dev/null || true; node_pid=""; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
size() { du -sb "$1" | cut -f1; }
mib() { awk -v n="$1" 'BEGIN { if (n >= 1048576) printf "%.1f MiB", n / 1048576; else printf "%.1f KiB", n / 1024 }'; }

conn=(--endpoint "127.0.0.1:$port" --ca-cert "$tmp/node/tls/node.crt")
start_node "$tmp/node" node
per_client=$(((keys + clients - 1) / clients))
echo "loading $((per_client * clients)) keys with $clients clients" >&2
t0=$(now)
"$meridian" bench --external "${conn[@]}" --clients "$clients" --ops "$per_client" --skip-baseline >"$tmp/load.txt"
t1=$(now)
load_s=$(secs "$t0" "$t1")
data_bytes=$(size "$tmp/node/db")

t0=$(now)
"$meridian" backup "$tmp/backups" "${conn[@]}" | tee "$tmp/full.txt" >&2
t1=$(now)
full_s=$(secs "$t0" "$t1")
full_bytes=$(size "$tmp/backups")

more=$(((keys / 100 + clients - 1) / clients))
"$meridian" bench --external "${conn[@]}" --clients "$clients" --ops "$more" --skip-baseline >/dev/null
t0=$(now)
"$meridian" backup "$tmp/backups" "${conn[@]}" | tee "$tmp/incr.txt" >&2
t1=$(now)
incr_s=$(secs "$t0" "$t1")
incr_bytes=$(($(size "$tmp/backups") - full_bytes))
# A third one with no write since: what a backup costs when nothing changed (the flush of an empty
# memtable writes no table file; a compaction may still have rewritten some).
before=$(size "$tmp/backups")
t0=$(now)
"$meridian" backup "$tmp/backups" "${conn[@]}" >&2
t1=$(now)
idle_s=$(secs "$t0" "$t1")
idle_bytes=$(($(size "$tmp/backups") - before))
stop_node

full_id=$(awk '{ sub(":", "", $2); print $2; exit }' "$tmp/full.txt")
t0=$(now)
"$meridian" restore "$tmp/backups" --data-dir "$tmp/restored" --backup "$full_id" >&2
t1=$(now)
restore_s=$(secs "$t0" "$t1")
t0=$(now)
conn=(--endpoint "127.0.0.1:$port" --ca-cert "$tmp/restored/tls/node.crt")
start_node "$tmp/restored" restored
t1=$(now)
open_s=$(secs "$t0" "$t1")
restored_keys=$("$meridian" status "${conn[@]}" | awk '/^keys/ { sub("~", "", $2); print $2; exit }')
stop_node

cat <<EOF

| step | time | size |
|---|---|---|
| load $((per_client * clients)) keys (bench --external, $clients clients, fsync) | ${load_s} s | data dir db/ $(mib "$data_bytes") |
| full backup (online) | ${full_s} s | $(mib "$full_bytes") |
| incremental backup after $((more * clients)) more writes | ${incr_s} s | +$(mib "$incr_bytes") |
| incremental backup with no write since | ${idle_s} s | +$(mib "$idle_bytes") |
| restore into a new data dir (verify + copy + new id) | ${restore_s} s | |
| start a node on it until it answers | ${open_s} s | keys (estimate): ${restored_keys:-?} |
EOF
