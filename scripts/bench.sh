#!/usr/bin/env bash
# `make bench`: one Meridian node beside raw RocksDB and Redis, measured in one run, so the ratios
# mean something on a shared machine (docs/benchmarks.md). It prints:
#   1. fsync writes and reads, 32 clients, one operation per request, beside a raw RocksDB synced
#      put loop with as many writers (the ratio the write path is held to);
#   2. the same in pipelines of PIPELINE (16) operations per request;
#   3. relaxed durability, 50 clients, per request and pipelined, beside redis-server
#      (appendfsync everysec, started and stopped here) under redis-benchmark -P 1 and -P PIPELINE,
#      and a table of the ratios.
# Benchmarks report; they never assert. CLIENTS, OPS and PIPELINE change the shape.
set -euo pipefail
cd "$(dirname "$0")/.."
pipeline=${PIPELINE:-16}
clients=${CLIENTS:-32}
ops=${OPS:-500}
meridian() { ${CARGO:-cargo} run --quiet -p meridian-node --bin meridian -- "$@"; }
# The ops/s of the line of `meridian bench` output ($1) that starts with $2.
rate() { printf '%s\n' "$1" | awk -v what="$2" 'index($0, what) == 1 { for (i = 1; i <= NF; i++) if ($i == "ops/s") { print $(i - 1); exit } }'; }
# The requests per second of redis-benchmark --csv output ($1) for the test named $2 ("SET -P 1").
redis_rate() { printf '%s\n' "$1" | awk -F'","' -v what="\"$2" '$1 == what { print $2; exit }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }

echo "== 1. fsync, $clients clients, one operation per request, beside raw RocksDB"
fsync_single=$(meridian bench --clients "$clients" --ops "$ops")
printf '%s\n' "$fsync_single"
echo
echo "== 2. fsync, $clients clients, pipelines of $pipeline"
fsync_piped=$(meridian bench --clients "$clients" --ops "$ops" --pipeline "$pipeline" --skip-baseline)
printf '%s\n' "$fsync_piped"
echo "ratio: pipelined meridian writes / raw rocksdb puts (section 1) = $(ratio "$(rate "$fsync_piped" "meridian write")" "$(rate "$fsync_single" "raw rocksdb put")")"
echo
echo "== 3. relaxed durability, 50 clients, beside Redis (appendfsync everysec)"
single=$(meridian bench --clients 50 --ops 2000 --relaxed --skip-baseline)
printf '%s\n' "$single"
piped=$(meridian bench --clients 50 --ops 2000 --relaxed --skip-baseline --pipeline "$pipeline")
printf '%s\n' "$piped"
redis=$(REDIS_TESTS=set,get scripts/bench-redis.sh --pipeline "$pipeline" --csv)
printf '%s\n' "$redis" | grep -v '^"test"' || true
echo
printf '%-30s %12s %12s %7s\n' "relaxed, 50 clients" "meridian/s" "redis/s" "ratio"
for row in "writes, one per request|meridian write|SET -P 1|single" \
  "writes, pipelines of $pipeline|meridian write|SET -P $pipeline|piped" \
  "reads, one per request|meridian read|GET -P 1|single" \
  "reads, pipelines of $pipeline|meridian read|GET -P $pipeline|piped"; do
  IFS='|' read -r label line test run <<<"$row"
  if [ "$run" = single ]; then ours=$(rate "$single" "$line"); else ours=$(rate "$piped" "$line"); fi
  theirs=$(redis_rate "$redis" "$test")
  printf '%-30s %12s %12s %7s\n' "$label" "$ours" "${theirs%.*}" "$(ratio "$ours" "$theirs")"
done
