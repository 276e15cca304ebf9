#!/usr/bin/env bash
# The bounded fuzz step of `make test` (docs/fuzzing.md): builds every fuzz target (client/fuzz,
# node/fuzz) on the stable toolchain without a sanitizer, then runs each for FUZZ_SECONDS (default
# 15) from its corpus kept in the repo. Fails on a crash, a timeout or a memory blow-up, printing
# the input that caused it and how to reproduce it.
#
#   scripts/fuzz-ci.sh                     # every target, FUZZ_SECONDS each
#   FUZZ_SECONDS=300 scripts/fuzz-ci.sh    # longer
#   scripts/fuzz-ci.sh peer_message        # some targets only
#
# The committed corpus is read, never written: what a run finds goes to a temporary folder (kept,
# and named at the end, when FUZZ_KEEP=1). Both fuzz crates build into one target folder,
# target/fuzz. node/fuzz links the server library, hence RocksDB: when the main build already
# compiled RocksDB (target/*/build/librocksdb-sys-*/out/librocksdb.a, same version), the fuzz build
# links that archive instead of compiling RocksDB again (~12 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=${FUZZ_SECONDS:-15}
# A fixed seed: CI replays the same mutations from the same corpus each time, so a red build means a
# change broke a decoder, not that this run got lucky (FUZZ_SEED=0 lets libFuzzer pick, for `make fuzz`).
seed=${FUZZ_SEED:-1}
rss_mb=${FUZZ_RSS_MB:-2048}
target_dir=$root/target/fuzz
# crate folder:target, in the order they run.
all=(client/fuzz:decode_frame node/fuzz:peer_message node/fuzz:stored_record node/fuzz:sync_message node/fuzz:doc_changes)

scripts/install-deps.sh --fuzz

selected=()
for entry in "${all[@]}"; do
  if (($# == 0)); then
    selected+=("$entry")
  else
    for name in "$@"; do [[ ${entry#*:} == "$name" ]] && selected+=("$entry"); done
  fi
done
((${#selected[@]})) || { echo "fuzz: no target named $* (targets: ${all[*]#*:})" >&2; exit 2; }

# Reuse the main build's RocksDB if it is the version node/fuzz locks.
lock_version() { grep -A1 '^name = "librocksdb-sys"$' "$1" | sed -n 's/^version = "\(.*\)"$/\1/p'; }
if [[ -z ${ROCKSDB_LIB_DIR:-} ]] && [[ $(lock_version Cargo.lock) == "$(lock_version node/fuzz/Cargo.lock)" ]]; then
  archive=$(ls -t target/debug/build/librocksdb-sys-*/out/librocksdb.a target/release/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -n1 || true)
  if [[ -n $archive ]]; then
    export ROCKSDB_LIB_DIR=$root/${archive%/librocksdb.a} ROCKSDB_STATIC=1
  fi
fi
[[ -n ${ROCKSDB_LIB_DIR:-} ]] || echo "fuzz: no RocksDB build to reuse: node/fuzz compiles RocksDB (~12 min on 2 cores)" >&2

fuzz() { (cd "$1" && cargo fuzz "${@:2}"); }
build_args=(-s none --target-dir "$target_dir")

start=$SECONDS
for crate in $(printf '%s\n' "${selected[@]%%:*}" | uniq); do
  echo "fuzz: building $crate" >&2
  fuzz "$crate" build "${build_args[@]}"
done
echo "fuzz: built in $((SECONDS - start)) s" >&2

found=$(mktemp -d "${TMPDIR:-/tmp}/meridian-fuzz.XXXXXX")
[[ ${FUZZ_KEEP:-0} == 1 ]] || trap 'rm -rf "$found"' EXIT
passed=0
failed=0
for entry in "${selected[@]}"; do
  crate=${entry%%:*} name=${entry#*:}
  mkdir -p "$found/$name" "$crate/corpus/$name"
  log=$found/$name.log
  echo "fuzz: $name for ${seconds}s" >&2
  if fuzz "$crate" run "${build_args[@]}" "$name" "$found/$name" "corpus/$name" -- \
      -seed="$seed" -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout=30 -print_final_stats=1 >"$log" 2>&1; then
    passed=$((passed + 1))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    echo "fuzz: $name ok (${runs:-?} runs, $(find "$found/$name" -type f | wc -l) new inputs)" >&2
  else
    failed=$((failed + 1))
    # What went wrong (a panic's message, libFuzzer's verdict), else the end of the log.
    grep -m3 -A4 -E 'panicked at|ERROR: libFuzzer|MAX_ALLOC_BYTES|^error' "$log" >&2 || tail -n 40 "$log" >&2
    reproducer=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
    echo "fuzz: $name FAILED; input: ${reproducer:-$crate/artifacts/$name/ (see the log above)}" >&2
    echo "fuzz: reproduce: (cd $crate && cargo fuzz run -s none --target-dir $target_dir $name ${reproducer:-<input>})" >&2
  fi
done
[[ ${FUZZ_KEEP:-0} == 1 ]] && echo "fuzz: new inputs kept in $found (minimise into the corpus: docs/fuzzing.md)" >&2
echo "fuzz: $passed passed, $failed failed"
((failed == 0))
