#!/usr/bin/env bash
# Bootstrap step of an AWS deployment (terraform/README.md): issues, with `meridian certs`, the
# cluster CA (once), the admin's client certificate and every node's certificate for the identity and
# hosts Terraform computed (output `certificate_identities`: cluster/region/zone/name, the node's
# elastic IP, its region's load balancer name, localhost). Run it in the root you apply, after the
# bootstrap apply (-var launch_nodes=false) and again whenever nodes or addresses change; it replaces
# node certificates, never the CA.
#
#   usage: issue-certs.sh [CERTS_DIR]   (default ./certs; MERIDIAN=path/to/meridian, TERRAFORM=terraform;
#          IDENTITIES_JSON=<the output's JSON> instead of asking Terraform, as the offline test does)
set -euo pipefail

dir="${1:-./certs}"
meridian="${MERIDIAN:-meridian}"
terraform="${TERRAFORM:-terraform}"

identities="${IDENTITIES_JSON:-$("$terraform" output -json certificate_identities)}"
cluster_id="$(printf '%s' "$identities" | python3 -c 'import json,sys; ids=json.load(sys.stdin); print({i["cluster_id"] for i in ids.values()}.pop())')"

if [[ ! -f "$dir/ca.crt" ]]; then
  "$meridian" certs ca --cluster-id "$cluster_id" --out "$dir"
fi
if [[ ! -f "$dir/admin.crt" ]]; then
  "$meridian" certs client --ca "$dir" --name admin --out "$dir"
fi
printf '%s' "$identities" | python3 -c '
import json, sys
for name, i in sorted(json.load(sys.stdin).items()):
    print(name, i["region"], i["zone"], ",".join(i["hosts"]))
' | while read -r name region zone hosts; do
  "$meridian" certs node --ca "$dir" --out "$dir" --force --name "$name" --region "$region" --zone "$zone" --host "$hosts"
done
echo "certificates in $dir: keep ca.key off the nodes (and out of version control)"
