# Applies a residency rules document to a running cluster with `meridian residency apply`, which makes
# the cluster's rules exactly the document's (adds, changes and removes the difference; nothing when
# they match). The built-in terraform_data resource re-runs it whenever the document changes, so
# `terraform apply` after a rule edit updates the cluster, and an unchanged document plans no change.

resource "terraform_data" "rules" {
  triggers_replace = sha256(var.rules_json)
  input            = var.rules_json

  provisioner "local-exec" {
    interpreter = ["/bin/sh", "-c"]
    # Retries cover a cluster still booting (unreachable, or not yet aware of every region a rule
    # names); the last attempt's error is what a persistent refusal reports.
    command = <<-EOT
      deadline=$(( $(date +%s) + ${var.wait_seconds} ))
      while :; do
        if printf '%s' "$MERIDIAN_RULES" | "$MERIDIAN_BIN" residency apply -; then exit 0; fi
        if [ "$(date +%s)" -ge "$deadline" ]; then exit 1; fi
        echo "retrying in 3 s (the cluster may still be starting)" >&2
        sleep 3
      done
    EOT
    environment = {
      MERIDIAN_RULES       = var.rules_json
      MERIDIAN_BIN         = var.meridian
      MERIDIAN_ENDPOINT    = var.endpoint
      MERIDIAN_CA_CERT     = var.ca_cert
      MERIDIAN_CLIENT_CERT = var.client_cert
      MERIDIAN_CLIENT_KEY  = var.client_key
    }
  }
}
