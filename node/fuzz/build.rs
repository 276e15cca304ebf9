//! RocksDB is C++. When `scripts/fuzz-ci.sh` links the main build's `librocksdb.a` (`ROCKSDB_LIB_DIR`)
//! instead of compiling RocksDB again here, librocksdb-sys does not ask for the C++ runtime. The fuzz
//! targets get it from libFuzzer; the seed generator (`examples/seeds.rs`) gets it here, as a link
//! argument (placed after the archives that need it, which a `rustc-link-lib` would not be).
fn main() {
    println!("cargo:rerun-if-env-changed=ROCKSDB_LIB_DIR");
    if std::env::var_os("ROCKSDB_LIB_DIR").is_some() {
        println!("cargo:rustc-link-arg=-lstdc++");
    }
}
