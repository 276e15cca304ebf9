#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test Meridian:
# clang + libclang-dev (RocksDB's bindgen bindings). Idempotent; does nothing when already present.
# With --bench it also installs redis-server/redis-tools (the yardstick `make bench-redis` runs) and
# etcd-server/etcd-client (the quorum anchor scripts/bench-region.sh runs).
# With --fuzz it also installs cargo-fuzz (pinned; scripts/fuzz-ci.sh, docs/fuzzing.md), built from
# crates.io with the project's toolchain; it drives libFuzzer on stable (`-s none`: no sanitizer,
# so no nightly), and libfuzzer-sys compiles libFuzzer's C++ with the same compiler as RocksDB.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2

need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
if [[ "${1:-}" == "--bench" ]]; then
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  command -v redis-benchmark >/dev/null 2>&1 || need+=(redis-tools)
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
  command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo is missing: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }

if ((${#need[@]})); then
  echo "installing: ${need[*]}" >&2
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [[ "${1:-}" == "--fuzz" ]] && [[ $(cargo fuzz --version 2>/dev/null) != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  echo "installing: cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
