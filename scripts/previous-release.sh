#!/usr/bin/env bash
# Builds the `meridian` binary of another revision (by default the previous landed baseline — the
# commit the last release note was about, untagged — named in scripts/previous-release.rev) and
# prints its path: what `make upgrade-test` runs beside this
# build (geo-tests/tests/region_kill9.rs with MERIDIAN_PREVIOUS_BIN).
#
#   scripts/previous-release.sh            # the previous release
#   scripts/previous-release.sh fb9bb90    # any revision this clone has
#
# The revision is exported with `git archive` into target/previous/<commit>/src and built there
# (its own target folder, kept: a second run is quick). When this clone's build already compiled
# RocksDB of the same version, the old build links that archive instead of compiling it again.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
rev=${1:-$(tr -d '[:space:]' < scripts/previous-release.rev)}
commit=$(git rev-parse --verify "$rev^{commit}") || {
  echo "previous-release: $rev is not a commit of this clone (fetch it, or name another)" >&2
  exit 2
}
out=$root/target/previous/$commit
bin=$out/target/debug/meridian
if [[ ! -x $bin ]]; then
  rm -rf "$out/src"
  mkdir -p "$out/src"
  git archive "$commit" | tar -x -C "$out/src"
  lock_version() { grep -A1 '^name = "librocksdb-sys"$' "$1" | sed -n 's/^version = "\(.*\)"$/\1/p'; }
  link=()
  if [[ -z ${ROCKSDB_LIB_DIR:-} ]] && [[ $(lock_version Cargo.lock) == "$(lock_version "$out/src/Cargo.lock")" ]]; then
    archive=$(ls -t target/debug/build/librocksdb-sys-*/out/librocksdb.a target/release/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -n1 || true)
    if [[ -n $archive ]]; then
      export ROCKSDB_LIB_DIR=$root/${archive%/librocksdb.a} ROCKSDB_STATIC=1
      # A prebuilt static RocksDB brings no C++ runtime with it: link it into the binary only.
      link=(-- -l dylib=stdc++)
    fi
  fi
  echo "previous-release: building meridian at ${commit:0:10} in $out (a few minutes)" >&2
  (cd "$out/src" && CARGO_TARGET_DIR=$out/target cargo rustc --locked -p meridian-node --bin meridian ${link[@]+"${link[@]}"} >&2)
fi
echo "$bin"
