# Turns a topology into a Meridian cluster: every node's meridian.toml, its certificate identity, its
# seeds, the residency rules document and the endpoints clients use. Nothing here talks to a cloud: the
# cloud modules (../aws-region) and the local example put what it computes where nodes run.

locals {
  region_names = sort(keys(var.regions))

  # Each region's nodes, explicit or generated from node_count (zones dealt round-robin).
  region_nodes = {
    for region, spec in var.regions : region => [
      for i in range(length(spec.nodes) > 0 ? length(spec.nodes) : spec.node_count) : {
        name    = length(spec.nodes) > 0 ? spec.nodes[i].name : "${region}-n${i + 1}"
        zone    = length(spec.nodes) > 0 ? spec.nodes[i].zone : (length(spec.zones) > 0 ? spec.zones[i % length(spec.zones)] : "${region}-${substr("abc", i % 3, 1)}")
        address = length(spec.nodes) > 0 ? spec.nodes[i].address : spec.address
        ports = {
          client = length(spec.nodes) > 0 ? spec.nodes[i].client_port : null
          http   = length(spec.nodes) > 0 ? spec.nodes[i].http_port : null
          peer   = length(spec.nodes) > 0 ? spec.nodes[i].peer_port : null
        }
      }
    ]
  }

  # Every node, regions in name order, with its index across the cluster (for port_stride).
  node_list = flatten([for region in local.region_names : [for n in local.region_nodes[region] : merge(n, { region = region })]])

  # Grouping (`...`) keeps a duplicate name from failing here before var.regions' validation names it.
  nodes_by_name = { for k, n in local.node_list : n.name => merge(n, { index = k })... }

  nodes = {
    for name, same in local.nodes_by_name : name => {
      name    = name
      region  = same[0].region
      zone    = same[0].zone
      address = same[0].address
      bind    = coalesce(var.listen_address, same[0].address)
      client  = coalesce(same[0].ports.client, var.ports.client + var.port_stride * same[0].index)
      http    = coalesce(same[0].ports.http, var.ports.http + var.port_stride * same[0].index)
      peer    = coalesce(same[0].ports.peer, var.ports.peer + var.port_stride * same[0].index)
      rf      = coalesce(var.regions[same[0].region].rf, var.rf)
    }
  }

  # ip:port, IPv6 in brackets, as the node's config parses socket addresses.
  sock = { for name, n in local.nodes : name => {
    client      = strcontains(n.bind, ":") ? "[${n.bind}]:${n.client}" : "${n.bind}:${n.client}"
    http        = strcontains(n.bind, ":") ? "[${n.bind}]:${n.http}" : "${n.bind}:${n.http}"
    peer        = strcontains(n.bind, ":") ? "[${n.bind}]:${n.peer}" : "${n.bind}:${n.peer}"
    public_quic = strcontains(n.address, ":") ? "[${n.address}]:${n.client}" : "${n.address}:${n.client}"
    public_http = strcontains(n.address, ":") ? "[${n.address}]:${n.http}" : "${n.address}:${n.http}"
    advertise   = strcontains(n.address, ":") ? "[${n.address}]:${n.peer}" : "${n.address}:${n.peer}"
  } }

  # Seeds: the other nodes of the node's region, and the first node of every other region (through
  # its WAN link when there is one). Any live member will do; the rest of the membership is gossiped.
  first_node = { for region in local.region_names : region => local.region_nodes[region][0].name }
  seeds = { for name, n in local.nodes : name => concat(
    [for other in local.region_nodes[n.region] : local.sock[other.name].advertise if other.name != name],
    [for region in local.region_names : try(var.wan_links[n.region][local.first_node[region]], local.sock[local.first_node[region]].advertise) if region != n.region]
  ) }

  endpoint_host = { for region in local.region_names : region => coalesce(var.regions[region].endpoint, local.region_nodes[region][0].address) }

  # What `meridian certs node` must be given for each node: the identity the node's config claims
  # and the hosts peers and clients dial it at.
  identities = { for name, n in local.nodes : name => {
    cluster_id = var.cluster_id
    region     = n.region
    zone       = n.zone
    name       = name
    uri        = "urn:meridian:cluster:${var.cluster_id}:region:${n.region}:zone:${n.zone}:node:${name}"
    hosts      = distinct(concat([n.address, local.endpoint_host[n.region]], var.extra_cert_hosts))
  } }

  configs = { for name, n in local.nodes : name => templatefile("${path.module}/templates/meridian.toml.tftpl", {
    cluster_id          = var.cluster_id
    node                = n
    sock                = local.sock[name]
    seeds               = local.seeds[name]
    dial_via            = lookup(var.wan_links, n.region, {})
    data_dir            = replace(var.paths.data_dir, "{node}", name)
    ca_cert             = replace(var.paths.ca_cert, "{node}", name)
    node_cert           = replace(var.paths.node_cert, "{node}", name)
    node_key            = replace(var.paths.node_key, "{node}", name)
    revoked             = var.paths.revoked == null ? null : replace(var.paths.revoked, "{node}", name)
    durability          = var.durability
    default_consistency = var.default_consistency
    namespaces          = var.namespaces
    auth                = var.auth
  }) }

  # The rules as `meridian residency apply` reads them (node/src/residency_apply.rs).
  residency_rules = [for r in var.residency_rules : {
    namespace = r.namespace
    prefix    = r.prefix
    regions   = r.regions
    home      = r.home
    strict    = r.strict
  }]
  residency_rules_json = jsonencode({ format = 1, rules = local.residency_rules })

  # The users as `meridian auth apply` reads them (node/src/auth_apply.rs).
  users_json = jsonencode({ format = 1, users = var.users })

  client_endpoints = { for region in local.region_names : region => {
    quic        = "${local.endpoint_host[region]}:${local.nodes[local.first_node[region]].client}"
    http        = "https://${local.endpoint_host[region]}:${local.nodes[local.first_node[region]].http}"
    server_name = local.endpoint_host[region]
    nodes       = [for n in local.region_nodes[region] : local.sock[n.name].public_quic]
  } }

  all_sockets = flatten([for name, s in local.sock : [s.public_quic, s.public_http, s.advertise]])
  link_nodes  = flatten([for region, links in var.wan_links : keys(links)])
}
