output "nodes" {
  description = "The region's nodes by name: zone (availability zone), public_ip (its elastic IP: advertised to peers, in its certificate), eip_allocation_id and subnet_id."
  value = { for name, n in var.nodes : name => {
    zone              = n.zone
    public_ip         = aws_eip.node[name].public_ip
    eip_allocation_id = aws_eip.node[name].allocation_id
    subnet_id         = aws_subnet.zone[n.zone].id
  } }
}

output "endpoint" {
  description = "The region's client endpoint host (the load balancer's DNS name): QUIC on the client port, HTTPS on the http port."
  value       = aws_lb.client.dns_name
}

output "security_group_id" {
  description = "The nodes' security group (client ports open to client_cidrs; ../aws-region adds the peer port for the cluster's nodes)."
  value       = aws_security_group.node.id
}

output "target_group_arns" {
  description = "The load balancer's target groups, `quic` and `https`, that ../aws-region registers the instances in."
  value       = { quic = aws_lb_target_group.quic.arn, https = aws_lb_target_group.https.arn }
}

output "vpc_id" {
  description = "The region's VPC."
  value       = aws_vpc.this.id
}
