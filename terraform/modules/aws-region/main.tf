# A region's Meridian nodes on EC2: one instance per node in its availability zone, a data volume
# each, the peer port opened to the cluster's nodes only, the node registered behind the region's
# load balancer, and cloud-init that installs the binary, writes the config and certificates and runs
# `meridian serve` under systemd.

locals {
  tags      = merge(var.tags, { "meridian:cluster" = var.cluster_id, "meridian:region" = var.name })
  instances = var.launch ? var.network.nodes : {}
}

data "aws_ssm_parameter" "debian" {
  count  = var.ami_id == null ? 1 : 0
  region = var.region
  name   = "/aws/service/debian/release/12/latest/amd64"
}

# Peer traffic (QUIC, mutual TLS) from the cluster's nodes, every region, and nothing else.
resource "aws_vpc_security_group_ingress_rule" "peer" {
  for_each          = var.peer_addresses
  region            = var.region
  security_group_id = var.network.security_group_id
  description       = "Meridian peer ${each.key}"
  ip_protocol       = "udp"
  from_port         = var.peer_port
  to_port           = var.peer_port
  cidr_ipv4         = "${each.value}/32"
}

resource "aws_ebs_volume" "data" {
  # checkov:skip=CKV_AWS_189:encrypted with the account's EBS key unless kms_key_id names a customer managed one
  for_each          = var.network.nodes
  region            = var.region
  availability_zone = each.value.zone
  size              = var.data_volume_gb
  type              = "gp3"
  encrypted         = true
  kms_key_id        = var.kms_key_id
  tags              = merge(local.tags, { Name = "${each.key}-data", "meridian:node" = each.key })
}

resource "aws_instance" "node" {
  # checkov:skip=CKV2_AWS_41:the node calls no AWS API, so it gets no IAM role (least privilege)
  for_each               = local.instances
  region                 = var.region
  ami                    = coalesce(var.ami_id, try(data.aws_ssm_parameter.debian[0].value, null))
  instance_type          = var.instance_type
  subnet_id              = each.value.subnet_id
  vpc_security_group_ids = [var.network.security_group_id]
  ebs_optimized          = true
  monitoring             = true

  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    config          = var.node_configs[each.key]
    ca_cert_pem     = var.ca_cert_pem
    cert_pem        = var.certificates[each.key].cert_pem
    key_pem         = var.certificates[each.key].key_pem
    meridian_url    = var.meridian_url
    meridian_sha256 = var.meridian_sha256
    data_device     = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${replace(aws_ebs_volume.data[each.key].id, "-", "")}"
  })
  # A new config or certificate means a new instance; the data volume (and so the node's data) stays.
  user_data_replace_on_change = true

  # The user data holds the node's private key: only IMDSv2, and only from the instance itself.
  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  root_block_device {
    encrypted = true
  }
  tags = merge(local.tags, { Name = each.key, "meridian:node" = each.key })

  lifecycle {
    precondition {
      condition     = contains(keys(var.certificates), each.key) && var.ca_cert_pem != ""
      error_message = "certificates / ca_cert_pem: node ${each.key} has no certificate yet: issue them (terraform/scripts/issue-certs.sh) before launching."
    }
  }
}

resource "aws_volume_attachment" "data" {
  for_each    = local.instances
  region      = var.region
  device_name = "/dev/sdf"
  volume_id   = aws_ebs_volume.data[each.key].id
  instance_id = aws_instance.node[each.key].id
}

resource "aws_eip_association" "node" {
  for_each      = local.instances
  region        = var.region
  allocation_id = each.value.eip_allocation_id
  instance_id   = aws_instance.node[each.key].id
}

resource "aws_lb_target_group_attachment" "quic" {
  for_each         = local.instances
  region           = var.region
  target_group_arn = var.network.target_group_arns.quic
  target_id        = aws_instance.node[each.key].id
}

resource "aws_lb_target_group_attachment" "https" {
  for_each         = local.instances
  region           = var.region
  target_group_arn = var.network.target_group_arns.https
  target_id        = aws_instance.node[each.key].id
}
