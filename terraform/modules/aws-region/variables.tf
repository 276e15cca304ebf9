variable "region" {
  description = "The AWS region (e.g. eu-west-1) every resource of this module is created in (the AWS provider's per-resource `region` argument)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-\\d$", var.region))
    error_message = "region must be an AWS region name such as eu-west-1."
  }
}

variable "name" {
  description = "The Meridian region these nodes form (e.g. eu-west)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,64}$", var.name))
    error_message = "name must be 1-64 characters of [A-Za-z0-9-_.] (a Meridian region name)."
  }
}

variable "cluster_id" {
  description = "The Meridian cluster id (tags)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,64}$", var.cluster_id))
    error_message = "cluster_id must be 1-64 characters of [A-Za-z0-9-_.]."
  }
}

variable "network" {
  description = "The region's network, as ../aws-region-network outputs it: `nodes` (zone, public_ip, eip_allocation_id, subnet_id by node name), `security_group_id` and `target_group_arns` (quic, https)."
  type = object({
    nodes = map(object({
      zone              = string
      public_ip         = string
      eip_allocation_id = string
      subnet_id         = string
    }))
    security_group_id = string
    target_group_arns = object({ quic = string, https = string })
  })

  validation {
    condition     = length(var.network.nodes) > 0
    error_message = "network.nodes: the region needs at least one node."
  }
}

variable "node_configs" {
  description = "Each node's meridian.toml by node name (output `node_configs` of ../cluster, this region's nodes only)."
  type        = map(string)

  validation {
    condition     = alltrue([for name, c in var.node_configs : strcontains(c, "node_name = \"${name}\"")])
    error_message = "node_configs: each config must be the one rendered for the node it is keyed by."
  }
}

variable "peer_addresses" {
  description = "Every node of the cluster (all regions) by name → its public IP: the only sources allowed to reach the peer port."
  type        = map(string)

  validation {
    condition     = length(var.peer_addresses) > 0
    error_message = "peer_addresses must list the cluster's nodes (at least this region's)."
  }
}

variable "launch" {
  description = "Create the instances. False for the bootstrap apply that creates the addresses the certificates are issued for (terraform/README.md); true once `certificates` hold every node's certificate."
  type        = bool
  default     = true
}

variable "ca_cert_pem" {
  description = "The cluster CA certificate (PEM; `meridian certs ca`). Written to every node."
  type        = string
  default     = ""

  validation {
    condition     = var.ca_cert_pem == "" || strcontains(var.ca_cert_pem, "BEGIN CERTIFICATE")
    error_message = "ca_cert_pem must be a PEM certificate (or empty before the bootstrap)."
  }
}

variable "certificates" {
  description = "Each node's certificate and private key (PEM) by node name, issued by `meridian certs node` for the identity ../cluster computed (terraform/scripts/issue-certs.sh). Needed when `launch` is true."
  type = map(object({
    cert_pem = string
    key_pem  = string
  }))
  default   = {}
  sensitive = true

  validation {
    condition     = alltrue([for name, c in var.certificates : strcontains(c.cert_pem, "BEGIN CERTIFICATE") && strcontains(c.key_pem, "PRIVATE KEY")])
    error_message = "certificates[*]: cert_pem must be a PEM certificate and key_pem a PEM private key (meridian certs node writes both)."
  }
}

variable "meridian_url" {
  description = "HTTPS URL the nodes download the `meridian` binary (linux, the instance's architecture) from at first boot: a release asset or a presigned S3 URL."
  type        = string

  validation {
    condition     = startswith(var.meridian_url, "https://")
    error_message = "meridian_url must be an https:// URL."
  }
}

variable "meridian_sha256" {
  description = "SHA-256 (hex) of that binary; a node refuses a download that does not match."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.meridian_sha256))
    error_message = "meridian_sha256 must be 64 lowercase hex characters."
  }
}

variable "ami_id" {
  description = "AMI of the nodes (a systemd Linux with cloud-init, e.g. Debian 12). Null: the latest Debian 12 amd64 AMI, from its public SSM parameter."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null ? true : can(regex("^ami-[0-9a-f]+$", var.ami_id))
    error_message = "ami_id must be an AMI id (ami-…) or null."
  }
}

variable "instance_type" {
  description = "EC2 instance type of the nodes."
  type        = string
  default     = "m7i.large"

  validation {
    condition     = can(regex("^[a-z0-9-]+\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must be an EC2 instance type such as m7i.large."
  }
}

variable "data_volume_gb" {
  description = "Size of each node's data volume (gp3, encrypted), mounted at the config's data_dir (/var/lib/meridian)."
  type        = number
  default     = 100

  validation {
    condition     = var.data_volume_gb >= 8 && var.data_volume_gb <= 16384
    error_message = "data_volume_gb must be within 8-16384."
  }
}

variable "peer_port" {
  description = "The nodes' peer port (UDP), as given to ../cluster."
  type        = number
  default     = 7402

  validation {
    condition     = var.peer_port >= 1 && var.peer_port <= 65535
    error_message = "peer_port must be within 1-65535."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.tags : length(k) > 0 && length(k) <= 128 && length(v) <= 256])
    error_message = "tags: keys must be 1-128 characters and values at most 256 (AWS limits)."
  }
}

variable "kms_key_id" {
  description = "ARN of a customer managed KMS key for the data volumes; null: the account's default EBS encryption key."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_id == null ? true : startswith(var.kms_key_id, "arn:")
    error_message = "kms_key_id must be a KMS key ARN (or null)."
  }
}
