output "instance_ids" {
  description = "The nodes' EC2 instance ids by node name (empty until `launch`)."
  value       = { for name, i in aws_instance.node : name => i.id }
}

output "data_volume_ids" {
  description = "The nodes' data volumes by node name (kept when an instance is replaced)."
  value       = { for name, v in aws_ebs_volume.data : name => v.id }
}
