#!/usr/bin/env bash
# The geo benchmark (issue 4), reported, never asserted: `meridian bench-geo` on this machine's
# loopback — three regions (one node each by default, to fit 2 cores), 80 ms emulated RTT between
# every pair through in-process UDP relays — measuring
#   1. cross-region convergence lag at a paced eventual write rate (baseline: the one-way delay);
#   2. latency of eventual / causal / local_quorum / quorum, and a causal hand-off between regions
#      (baseline: the RTT to the nearest other region);
#   3. bytes over the links from heal to convergence after a partition (baseline: the changed bytes);
# each part on a fresh cluster, everything stopped at the end, on error and on Ctrl-C. See
# docs/benchmarks.md for what each figure means.
#
# Usage: scripts/bench-geo.sh [any `meridian bench-geo` option, e.g. --rate 2000 --skip-partition]
# Defaults here: the binary's (--rate 5000 --secs 20 --keys 100000 --changed 1000 --partition-secs 20).
# The mission size: scripts/bench-geo.sh --keys 1000000 --changed 1000 --partition-secs 60
#   (loading 1M keys takes minutes; raise --converge-timeout-secs if replication of the load is slow).
# Environment: MERIDIAN_BIN (default: build target/debug/meridian with cargo, the optimised dev
# profile), GEO_BASE_PORT (default 19600: nodes on base+10k, +1, +2, links on base+1000…),
# BENCH_TIMEOUT_S (whole run, default 1800), KEEP=1 (keep the clusters' directories and node logs).
set -euo pipefail

for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench_timeout=${BENCH_TIMEOUT_S:-1800}
if [[ -n "${MERIDIAN_BIN:-}" ]]; then
  MERIDIAN_BIN_GIVEN=1
else
  echo "building meridian (cargo build -p meridian-node)" >&2
  (cd "$root" && cargo build --quiet -p meridian-node)
  MERIDIAN_BIN=$root/target/debug/meridian
fi
extra=()
if [[ "${KEEP:-0}" == 1 ]]; then extra+=(--keep); fi

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%Y-%m-%dT%H:%MZ)"
# What the binary was built from: the figures belong to that tree (a shared checkout may hold
# others' uncommitted changes).
if [[ -z "${MERIDIAN_BIN_GIVEN:-}" ]] && git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
  dirty=$(git -C "$root" status --porcelain --untracked-files=no | awk '{ print $2 }' | paste -sd' ' -)
  echo "built from: $(git -C "$root" rev-parse --short HEAD)${dirty:+ plus uncommitted changes to $dirty}"
fi
# In the background, so that a signal to this script reaches the benchmark (which stops its nodes
# and links) at once; `timeout` bounds the whole run.
timeout --signal=TERM --kill-after=30 "$bench_timeout" \
  "$MERIDIAN_BIN" bench-geo --base-port "${GEO_BASE_PORT:-19600}" "${extra[@]}" "$@" &
bench_pid=$!
trap 'kill -TERM "$bench_pid" 2>/dev/null; wait "$bench_pid"; exit 130' INT
trap 'kill -TERM "$bench_pid" 2>/dev/null; wait "$bench_pid"; exit 143' TERM HUP
status=0
wait "$bench_pid" || status=$?
echo "machine after: load average $(cut -d' ' -f1-3 /proc/loadavg)"
exit "$status"
