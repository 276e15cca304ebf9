# A multi-region Meridian cluster on AWS: per region a network (addresses, load balancer) and nodes,
# every node's config computed by modules/cluster from the whole topology, and the residency rules
# applied to the running cluster. The order, without a cycle:
#   aws-region-network (elastic IPs, load balancer DNS) → cluster (configs, identities, rules)
#   → aws-region (instances with cloud-init) → cluster-metadata (`meridian residency apply`,
#   `meridian auth apply`).

locals {
  # Node names and zones: <region>-n1 … dealt round-robin over the region's availability zones.
  node_zones = { for region, r in var.regions : region => {
    for i in range(r.nodes) : "${region}-n${i + 1}" => { zone = r.zones[i % length(r.zones)] }
  } }
  ports        = { client = 7400, http = 7480, peer = 7402 }
  certs_dir    = abspath(var.certificates_dir)
  first_region = sort(keys(var.regions))[0]
  node_ips     = merge([for region, net in module.network : { for name, n in net.nodes : name => n.public_ip }]...)
}

module "network" {
  source   = "./modules/aws-region-network"
  for_each = var.regions

  region              = each.value.aws_region
  name                = each.key
  cluster_id          = var.cluster_id
  nodes               = local.node_zones[each.key]
  client_cidrs        = var.client_cidrs
  ports               = local.ports
  deletion_protection = var.deletion_protection
  tags                = var.tags
}

module "cluster" {
  source = "./modules/cluster"

  cluster_id = var.cluster_id
  regions = { for region, r in var.regions : region => {
    nodes    = [for name, n in local.node_zones[region] : { name = name, zone = n.zone, address = module.network[region].nodes[name].public_ip }]
    endpoint = module.network[region].endpoint
    rf       = r.rf
  } }
  rf                  = var.rf
  durability          = var.durability
  default_consistency = var.default_consistency
  namespaces          = var.namespaces
  residency_rules     = var.residency_rules
  users               = var.users
  auth                = { admins = var.admins }
  # The elastic IP is not on the instance's interface: bind every address, advertise the EIP.
  listen_address = "0.0.0.0"
  ports          = local.ports
  # `localhost` is the SDK's and CLI's default server name; the load balancer's DNS name is in too.
  extra_cert_hosts = ["localhost"]
}

module "region" {
  source   = "./modules/aws-region"
  for_each = var.regions

  region     = each.value.aws_region
  name       = each.key
  cluster_id = var.cluster_id
  network = {
    nodes             = module.network[each.key].nodes
    security_group_id = module.network[each.key].security_group_id
    target_group_arns = module.network[each.key].target_group_arns
  }
  node_configs   = { for name in keys(local.node_zones[each.key]) : name => module.cluster.node_configs[name] }
  peer_addresses = local.node_ips
  peer_port      = local.ports.peer
  launch         = var.launch_nodes
  ca_cert_pem    = var.launch_nodes ? file("${local.certs_dir}/ca.crt") : ""
  certificates = var.launch_nodes ? { for name in keys(local.node_zones[each.key]) : name => {
    cert_pem = file("${local.certs_dir}/${name}.crt")
    key_pem  = file("${local.certs_dir}/${name}.key")
  } } : {}
  meridian_url    = var.meridian_url
  meridian_sha256 = var.meridian_sha256
  instance_type   = var.instance_type
  data_volume_gb  = var.data_volume_gb
  tags            = var.tags
}

module "metadata" {
  source     = "./modules/cluster-metadata"
  count      = var.launch_nodes ? 1 : 0
  depends_on = [module.region]

  rules_json  = module.cluster.residency_rules_json
  users_json  = module.cluster.users_json
  meridian    = var.meridian_cli
  endpoint    = module.cluster.client_endpoints[local.first_region].quic
  ca_cert     = "${local.certs_dir}/ca.crt"
  client_cert = "${local.certs_dir}/admin.crt"
  client_key  = "${local.certs_dir}/admin.key"
  # New instances boot, download the binary and join: give them time.
  wait_seconds = 900
}
