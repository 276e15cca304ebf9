# A Meridian cluster of processes on this machine, rendered by the same cluster module as a cloud
# deployment: certificates issued with `meridian certs` for the identities the module computes, every
# node's config written and checked with `meridian config check`, and (once the nodes run) the
# residency rules and users applied with `meridian residency apply` and `meridian auth apply`. Start the nodes with
# `meridian serve --config <dir>/<node>/meridian.toml` (README.md beside this file).

locals {
  dir = abspath(coalesce(var.dir, "${path.root}/run"))

  # One relay per (dialling region, node of another region), as `meridian demo` lays them out.
  node_names = { for r in var.regions : r => [for i in range(var.nodes_per_region) : "${r}-n${i + 1}"] }
  links = flatten([for from in var.regions : flatten([for to in var.regions : [
    for name in local.node_names[to] : { from = from, to = name, to_region = to }
  ] if to != from])])
  relays = [for i, l in local.links : merge(l, { listen = "127.0.0.1:${var.base_port + 500 + i}" })]
}

module "cluster" {
  source = "../../modules/cluster"

  cluster_id = var.cluster_id
  regions    = { for r in var.regions : r => { node_count = var.nodes_per_region } }
  rf         = var.rf
  ports      = { client = var.base_port, http = var.base_port + 1, peer = var.base_port + 2 }
  # Every node shares 127.0.0.1: node k takes the ports 10k above the base.
  port_stride      = 10
  durability       = "fsync"
  namespaces       = var.namespaces
  residency_rules  = var.residency_rules
  users            = var.users
  extra_cert_hosts = ["localhost"]
  wan_links        = var.wan_relays ? { for from in var.regions : from => { for r in local.relays : r.to => r.listen if r.from == from } } : {}
  paths = {
    data_dir  = "${local.dir}/{node}/data"
    ca_cert   = "${local.dir}/certs/ca.crt"
    node_cert = "${local.dir}/certs/{node}.crt"
    node_key  = "${local.dir}/certs/{node}.key"
  }
}

# The cluster CA and the admin's client certificate, made once (a CA is never replaced here: that
# would orphan every certificate it issued).
resource "terraform_data" "ca" {
  triggers_replace = [var.cluster_id, local.dir]

  provisioner "local-exec" {
    interpreter = ["/bin/sh", "-c"]
    command     = <<-EOT
      set -e
      if [ ! -f "$DIR/certs/ca.crt" ]; then "$MERIDIAN" certs ca --cluster-id "$CLUSTER" --out "$DIR/certs"; fi
      if [ ! -f "$DIR/certs/admin.crt" ]; then "$MERIDIAN" certs client --ca "$DIR/certs" --name admin --out "$DIR/certs"; fi
    EOT
    environment = { MERIDIAN = var.meridian, DIR = local.dir, CLUSTER = var.cluster_id }
  }
}

# Each node: its certificate for the identity and hosts the module computed, its config, checked the
# way `meridian serve` will load it. Re-run when either changes.
resource "terraform_data" "node" {
  for_each   = module.cluster.node_configs
  depends_on = [terraform_data.ca]

  triggers_replace = [each.value, module.cluster.certificate_identities[each.key]]

  provisioner "local-exec" {
    interpreter = ["/bin/sh", "-c"]
    command     = <<-EOT
      set -e
      "$MERIDIAN" certs node --ca "$DIR/certs" --out "$DIR/certs" --force \
        --name "$NODE" --region "$REGION" --zone "$ZONE" --host "$HOSTS"
      mkdir -p "$DIR/$NODE"
      printf '%s' "$CONFIG" > "$DIR/$NODE/meridian.toml"
      "$MERIDIAN" config check --files "$DIR/$NODE/meridian.toml"
    EOT
    environment = {
      MERIDIAN = var.meridian
      DIR      = local.dir
      NODE     = each.key
      REGION   = module.cluster.certificate_identities[each.key].region
      ZONE     = module.cluster.certificate_identities[each.key].zone
      HOSTS    = join(",", module.cluster.certificate_identities[each.key].hosts)
      CONFIG   = each.value
    }
  }
}

module "metadata" {
  source     = "../../modules/cluster-metadata"
  count      = var.apply_rules ? 1 : 0
  depends_on = [terraform_data.node]

  rules_json   = module.cluster.residency_rules_json
  users_json   = module.cluster.users_json
  meridian     = var.meridian
  endpoint     = module.cluster.client_endpoints[var.regions[0]].quic
  ca_cert      = "${local.dir}/certs/ca.crt"
  client_cert  = "${local.dir}/certs/admin.crt"
  client_key   = "${local.dir}/certs/admin.key"
  wait_seconds = var.rules_wait_seconds
}
