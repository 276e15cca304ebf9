# The part of a region that exists before any node: network, security group, one elastic IP per node
# and the region's load balancer. Split from ../aws-region because the nodes' configs need every
# node's address (seeds, certificates) before any instance exists: root → this module (addresses) →
# ../cluster (configs) → ../aws-region (instances), with no cycle.

locals {
  zones = sort(distinct([for n in var.nodes : n.zone]))
  tags  = merge(var.tags, { "meridian:cluster" = var.cluster_id, "meridian:region" = var.name })
}

resource "aws_vpc" "this" {
  # checkov:skip=CKV2_AWS_11:flow logs need a destination and a role the operator chooses; enable them on the VPC id output
  region               = var.region
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(local.tags, { Name = "meridian-${var.cluster_id}-${var.name}" })
}

# Nothing uses the default security group; leave it with no rules at all.
resource "aws_default_security_group" "default" {
  region = var.region
  vpc_id = aws_vpc.this.id
  tags   = local.tags
}

resource "aws_internet_gateway" "this" {
  region = var.region
  vpc_id = aws_vpc.this.id
  tags   = local.tags
}

resource "aws_subnet" "zone" {
  for_each          = toset(local.zones)
  region            = var.region
  vpc_id            = aws_vpc.this.id
  availability_zone = each.key
  cidr_block        = cidrsubnet(var.vpc_cidr, 24 - tonumber(split("/", var.vpc_cidr)[1]), index(local.zones, each.key))
  tags              = merge(local.tags, { Name = "meridian-${var.cluster_id}-${each.key}" })
}

resource "aws_route_table" "public" {
  region = var.region
  vpc_id = aws_vpc.this.id
  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this.id
  }
  tags = local.tags
}

resource "aws_route_table_association" "zone" {
  for_each       = aws_subnet.zone
  region         = var.region
  subnet_id      = each.value.id
  route_table_id = aws_route_table.public.id
}

# Client ports from the operator's CIDRs only. The peer port is opened by ../aws-region, to the
# cluster's node addresses only (they are known once every region's elastic IPs exist).
resource "aws_security_group" "node" {
  region      = var.region
  name        = "meridian-${var.cluster_id}-${var.name}"
  description = "Meridian nodes of ${var.cluster_id}/${var.name}"
  vpc_id      = aws_vpc.this.id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "client_quic" {
  for_each          = toset(var.client_cidrs)
  region            = var.region
  security_group_id = aws_security_group.node.id
  description       = "Meridian client protocol (QUIC)"
  ip_protocol       = "udp"
  from_port         = var.ports.client
  to_port           = var.ports.client
  cidr_ipv4         = each.key
}

resource "aws_vpc_security_group_ingress_rule" "client_https" {
  for_each          = toset(var.client_cidrs)
  region            = var.region
  security_group_id = aws_security_group.node.id
  description       = "Meridian HTTPS API"
  ip_protocol       = "tcp"
  from_port         = var.ports.http
  to_port           = var.ports.http
  cidr_ipv4         = each.key
}

# The load balancer's health checks come from inside the VPC.
resource "aws_vpc_security_group_ingress_rule" "health" {
  region            = var.region
  security_group_id = aws_security_group.node.id
  description       = "Load balancer health checks (HTTPS /readyz)"
  ip_protocol       = "tcp"
  from_port         = var.ports.http
  to_port           = var.ports.http
  cidr_ipv4         = var.vpc_cidr
}

resource "aws_vpc_security_group_egress_rule" "all" {
  region            = var.region
  security_group_id = aws_security_group.node.id
  description       = "Peers in every region, the binary download, package mirrors"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

# One elastic IP per node: its address is known before the instance exists, so it can be put in the
# configs (seeds, advertise) and certificates (IP SAN checked by dialling peers).
resource "aws_eip" "node" {
  # checkov:skip=CKV2_AWS_19:associated with its instance by ../aws-region (aws_eip_association), which checkov does not follow across modules
  for_each = var.nodes
  region   = var.region
  domain   = "vpc"
  tags     = merge(local.tags, { Name = each.key, "meridian:node" = each.key })
}

# The region's client endpoint: a network load balancer passing QUIC (UDP) and HTTPS (TCP) through
# to the nodes, TLS untouched (the nodes' certificates name its DNS name).
resource "aws_lb" "client" {
  # checkov:skip=CKV_AWS_91:access logs need an S3 bucket the operator chooses; the nodes log every request decision themselves
  region                           = var.region
  name                             = substr("mrd-${var.cluster_id}-${var.name}", 0, 32)
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = [for s in aws_subnet.zone : s.id]
  security_groups                  = [aws_security_group.node.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.deletion_protection
  tags                             = local.tags
}

resource "aws_lb_target_group" "quic" {
  region      = var.region
  name        = substr("mrd-${var.cluster_id}-${var.name}-q", 0, 32)
  port        = var.ports.client
  protocol    = "UDP"
  vpc_id      = aws_vpc.this.id
  target_type = "instance"
  health_check {
    protocol = "HTTPS"
    port     = tostring(var.ports.http)
    path     = "/readyz"
  }
  tags = local.tags
}

resource "aws_lb_target_group" "https" {
  region      = var.region
  name        = substr("mrd-${var.cluster_id}-${var.name}-h", 0, 32)
  port        = var.ports.http
  protocol    = "TCP"
  vpc_id      = aws_vpc.this.id
  target_type = "instance"
  health_check {
    protocol = "HTTPS"
    port     = tostring(var.ports.http)
    path     = "/readyz"
  }
  tags = local.tags
}

resource "aws_lb_listener" "quic" {
  region            = var.region
  load_balancer_arn = aws_lb.client.arn
  port              = var.ports.client
  protocol          = "UDP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.quic.arn
  }
}

resource "aws_lb_listener" "https" {
  region            = var.region
  load_balancer_arn = aws_lb.client.arn
  port              = var.ports.http
  protocol          = "TCP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.https.arn
  }
}
