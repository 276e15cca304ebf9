# Applies cluster metadata to a running cluster from the machine running Terraform, with the
# declarative commands: `meridian residency apply` (the residency rules) and `meridian auth apply` (users
# and their roles). Each makes the cluster's metadata exactly its document's (adds, changes and removes
# the difference; nothing when they match). The built-in terraform_data resources re-run them whenever
# their document changes, so `terraform apply` after an edit updates the cluster, and an unchanged
# document plans no change.

locals {
  # Retries cover a cluster still booting (unreachable, or not yet aware of every region a rule
  # names); the last attempt's error is what a persistent refusal reports.
  apply_with_retries = <<-EOT
    deadline=$(( $(date +%s) + ${var.wait_seconds} ))
    while :; do
      if printf '%s' "$DOCUMENT" | "$MERIDIAN_BIN" $COMMAND apply -; then exit 0; fi
      if [ "$(date +%s)" -ge "$deadline" ]; then exit 1; fi
      echo "retrying in 3 s (the cluster may still be starting)" >&2
      sleep 3
    done
  EOT
  connection = {
    MERIDIAN_BIN         = var.meridian
    MERIDIAN_ENDPOINT    = var.endpoint
    MERIDIAN_CA_CERT     = var.ca_cert
    MERIDIAN_CLIENT_CERT = var.client_cert
    MERIDIAN_CLIENT_KEY  = var.client_key
  }
}

resource "terraform_data" "rules" {
  triggers_replace = sha256(var.rules_json)
  input            = var.rules_json

  provisioner "local-exec" {
    interpreter = ["/bin/sh", "-c"]
    command     = local.apply_with_retries
    environment = merge(local.connection, { DOCUMENT = var.rules_json, COMMAND = "residency" })
  }
}

resource "terraform_data" "users" {
  count            = var.users_json == null ? 0 : 1
  triggers_replace = sha256(var.users_json)
  input            = var.users_json

  provisioner "local-exec" {
    interpreter = ["/bin/sh", "-c"]
    command     = local.apply_with_retries
    environment = merge(local.connection, { DOCUMENT = var.users_json, COMMAND = "auth" })
  }
}
