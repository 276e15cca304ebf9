output "client_endpoints" {
  description = "Per region, what an SDK client needs: `quic` (host:port of the client protocol behind the region's load balancer), `http` (the HTTPS API), `server_name` and `nodes` (every node's client address)."
  value       = module.cluster.client_endpoints
}

output "certificate_identities" {
  description = "What each node's certificate must say (cluster, region, zone, name, hosts): scripts/issue-certs.sh issues them from this output."
  value       = module.cluster.certificate_identities
}

output "node_addresses" {
  description = "Each node's public (elastic) IP by node name."
  value       = local.node_ips
}

output "credentials" {
  description = "Where the credentials are on the machine running Terraform: the CA certificate clients trust and the admin's client certificate and key."
  value = {
    ca_cert     = "${local.certs_dir}/ca.crt"
    admin_cert  = "${local.certs_dir}/admin.crt"
    admin_key   = "${local.certs_dir}/admin.key"
    admin_names = var.admins
  }
}

output "residency_rules_json" {
  description = "The residency rules document applied to the cluster."
  value       = module.cluster.residency_rules_json
}

output "instance_ids" {
  description = "EC2 instance ids by region and node name."
  value       = { for region, m in module.region : region => m.instance_ids }
}

output "sdk" {
  description = "Per region, the Rust SDK call that connects to it with the admin's credentials (swap in an application's certificate or token)."
  value = { for region, e in module.cluster.client_endpoints : region => join("", [
    "Client::builder().endpoint(\"${e.quic}\").server_name(\"${e.server_name}\")",
    ".ca_cert_file(\"${local.certs_dir}/ca.crt\")",
    ".client_cert_files(\"${local.certs_dir}/admin.crt\", \"${local.certs_dir}/admin.key\").connect().await?",
  ]) }
}
