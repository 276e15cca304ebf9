#!/usr/bin/env bash
# Runs redis-benchmark (50 clients, 100-byte values) against a private redis-server with
# appendfsync everysec on a loopback port, the yardstick beside `meridian bench`; stops it afterwards.
#   scripts/bench-redis.sh [--pipeline N] [--csv]
# --pipeline N: also with N commands per request (redis-benchmark -P N); --csv: machine-readable
# lines (what scripts/bench.sh reads). REDIS_TESTS (set), REDIS_OPS (200000), REDIS_PORT.
set -euo pipefail
pipeline=1
format=-q
while [ $# -gt 0 ]; do
  case "$1" in
    --pipeline) pipeline=${2:?--pipeline needs a number}; shift 2 ;;
    --csv) format=--csv; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
port=${REDIS_PORT:-16379}
dir=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes --appendfsync everysec \
  --save "" --daemonize yes --logfile "$dir/redis.log"
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
for p in $(printf '%s\n' 1 "$pipeline" | sort -un); do
  [ "$format" = --csv ] || echo "redis-benchmark -P $p:"
  redis-benchmark -p "$port" -t "${REDIS_TESTS:-set}" -c 50 -d 100 -n "${REDIS_OPS:-200000}" -P "$p" "$format" |
    if [ "$format" = --csv ]; then sed "s/^\"\([A-Z]*\)\"/\"\1 -P $p\"/"; else cat; fi
done
