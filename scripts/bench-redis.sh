#!/usr/bin/env bash
# Runs redis-benchmark SET (50 clients, 100-byte values) against a private redis-server with
# appendfsync everysec on a loopback port, the yardstick beside `meridian bench`. Stops it afterwards.
set -euo pipefail
port=${REDIS_PORT:-16379}
dir=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes --appendfsync everysec \
  --save "" --daemonize yes --logfile "$dir/redis.log"
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-benchmark -p "$port" -t set -c 50 -d 100 -n "${REDIS_OPS:-200000}" -q
