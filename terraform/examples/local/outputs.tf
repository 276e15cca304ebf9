output "dir" {
  description = "Where the cluster's files are."
  value       = local.dir
}

output "nodes" {
  description = "Every node by name: region, zone, its config file, and its client, HTTP and peer addresses."
  value = { for name, n in module.cluster.nodes : name => {
    region      = n.region
    zone        = n.zone
    config      = "${local.dir}/${name}/meridian.toml"
    client_addr = n.client_addr
    http_addr   = n.http_addr
    peer_addr   = n.peer_addr
  } }
}

output "client_endpoints" {
  description = "Per region: the QUIC endpoint, HTTPS URL and every node's client address (trust `ca_cert`, authenticate with the admin certificate)."
  value       = module.cluster.client_endpoints
}

output "ca_cert" {
  description = "The cluster CA certificate: the one trust anchor clients need."
  value       = "${local.dir}/certs/ca.crt"
}

output "admin_credentials" {
  description = "The admin client certificate and key (the principal every node's auth.admins names)."
  value       = { cert = "${local.dir}/certs/admin.crt", key = "${local.dir}/certs/admin.key" }
}

output "wan_relays" {
  description = "With wan_relays: the relays to run, each listening on `listen` and forwarding to node `to`'s peer address, for traffic from region `from`."
  value = var.wan_relays ? [for r in local.relays : {
    from     = r.from
    to       = r.to
    listen   = r.listen
    upstream = module.cluster.nodes[r.to].peer_addr
  }] : []
}

output "residency_rules_json" {
  description = "The rules document applied when apply_rules is true."
  value       = module.cluster.residency_rules_json
}

output "certificate_identities" {
  description = "Each node's certificate identity (cluster/region/zone/name, its URI and hosts), as issued into certs/<node>.crt."
  value       = module.cluster.certificate_identities
}

output "users_json" {
  description = "The users document applied when apply_rules is true."
  value       = module.cluster.users_json
}
