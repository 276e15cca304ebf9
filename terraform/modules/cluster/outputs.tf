output "cluster_id" {
  description = "The cluster's id."
  value       = var.cluster_id
}

output "regions" {
  description = "The region names, sorted."
  value       = local.region_names
}

output "nodes" {
  description = "Every node by name: region, zone, address, the socket addresses it binds (client, http, peer) and advertises, and its rf."
  value = { for name, n in local.nodes : name => merge(n, {
    client_addr = local.sock[name].client
    http_addr   = local.sock[name].http
    peer_addr   = local.sock[name].peer
    advertise   = local.sock[name].advertise
  }) }
}

output "node_configs" {
  description = "Every node's complete meridian.toml by node name (the schema `meridian serve` parses; check one with `meridian config check FILE`)."
  value       = local.configs

  precondition {
    condition     = length(distinct(local.all_sockets)) == length(local.all_sockets)
    error_message = "ports / port_stride: two nodes at one address would listen on the same port; give nodes their own addresses or set port_stride."
  }
  precondition {
    condition     = alltrue([for node in local.link_nodes : contains(keys(local.nodes), node)])
    error_message = "wan_links: a link names a node that is not in var.regions."
  }
}

output "certificate_identities" {
  description = "What to issue each node's certificate for, by node name: cluster_id, region, zone, name (bound into the certificate's `urn:meridian:` URI, shown as `uri`) and hosts (its DNS/IP SANs). Issue with `meridian certs node --ca CA --name NAME --region REGION --zone ZONE --host HOSTS`."
  value       = local.identities
}

output "seeds" {
  description = "Each node's `peer.seeds` by node name: the other nodes of its region and the first node of every other region."
  value       = local.seeds
}

output "residency_rules" {
  description = "The residency rules in match order, normalised (prefix \"\" and strict false when not given)."
  value       = local.residency_rules
}

output "residency_rules_json" {
  description = "The residency rules as the JSON document `meridian residency apply FILE` makes the cluster's rules."
  value       = local.residency_rules_json
}

output "users_json" {
  description = "The users and their roles as the JSON document `meridian auth apply FILE` makes the cluster's users."
  value       = local.users_json
}

output "client_endpoints" {
  description = "Per region, what an SDK client needs: `quic` (host:port of the client protocol), `http` (the HTTPS API), `server_name` (the name to verify the node certificate for) and `nodes` (every node's client address, for failover)."
  value       = local.client_endpoints
}

output "admins" {
  description = "The principals that are cluster admins from the start (issue their client certificates with `meridian certs client --name NAME`)."
  value       = var.auth.admins
}

output "prometheus_targets" {
  description = "Prometheus file_sd target groups, one per node in name order: the node's HTTP address (it serves /metrics) with the labels `region`, `node` and `zone` that the dashboard and rules of terraform/monitoring expect (docs/monitoring.md). `jsonencode` it into a file_sd file."
  value = [for name in sort(keys(local.nodes)) : {
    targets = [local.sock[name].public_http]
    labels  = { region = local.nodes[name].region, node = name, zone = local.nodes[name].zone }
  }]
}
