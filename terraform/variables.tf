variable "cluster_id" {
  description = "The cluster's id: in every node's config, the CA and every certificate (1-64 characters of [A-Za-z0-9-_.])."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,64}$", var.cluster_id))
    error_message = "cluster_id must be 1-64 characters of [A-Za-z0-9-_.]."
  }
}

variable "regions" {
  description = "The cluster's regions by Meridian region name: the AWS region each runs in, its availability zones (nodes are dealt over them round-robin; zone = AZ), its node count and optionally its own rf."
  type = map(object({
    aws_region = string
    zones      = list(string)
    nodes      = optional(number, 3)
    rf         = optional(number)
  }))

  validation {
    condition     = length(var.regions) > 0 && alltrue([for name, r in var.regions : r.nodes >= 1 && length(r.zones) >= 1])
    error_message = "regions: at least one region, each with at least one node and one availability zone."
  }
  validation {
    condition     = alltrue(flatten([for name, r in var.regions : [for z in r.zones : startswith(z, r.aws_region)]]))
    error_message = "regions[*].zones: every availability zone must belong to the region's aws_region (e.g. eu-west-1a in eu-west-1)."
  }
}

variable "rf" {
  description = "Replicas of each partition per region (regions may set their own)."
  type        = number
  default     = 3
}

variable "durability" {
  description = "`storage.durability` of every node: fsync or relaxed."
  type        = string
  default     = "fsync"
}

variable "default_consistency" {
  description = "Consistency of requests that choose none: eventual, causal, local_quorum or quorum."
  type        = string
  default     = "eventual"
}

variable "namespaces" {
  description = "Per-namespace default consistency, by namespace."
  type        = map(object({ consistency = string }))
  default     = {}
}

variable "residency_rules" {
  description = "Residency rules in match order (modules/cluster): keys of `namespace` starting with `prefix` live only in `regions`."
  type = list(object({
    namespace = string
    prefix    = optional(string, "")
    regions   = list(string)
    home      = optional(string)
    strict    = optional(bool, false)
  }))
  default = []
}

variable "users" {
  description = "Users and their role per namespace (`*`: every namespace): read, write or admin, applied with `meridian auth apply`. Make their tokens with `meridian auth token create`, or issue client certificates named after them."
  type        = map(map(string))
  default     = {}
}

variable "admins" {
  description = "Principals that are cluster admins from the start (the bootstrap issues `admin`'s client certificate)."
  type        = list(string)
  default     = ["admin"]
}

variable "client_cidrs" {
  description = "CIDRs allowed to reach the client ports (QUIC and HTTPS) of the load balancers and nodes."
  type        = list(string)

  validation {
    condition     = length(var.client_cidrs) > 0 && alltrue([for c in var.client_cidrs : can(cidrhost(c, 0))])
    error_message = "client_cidrs must list at least one valid IPv4 CIDR."
  }
}

variable "certificates_dir" {
  description = "Directory on the machine running Terraform holding ca.crt, admin.crt/.key and <node>.crt/.key, written by scripts/issue-certs.sh (the CA key stays there, never on a node)."
  type        = string
  default     = "./certs"
}

variable "launch_nodes" {
  description = "Create the instances (and apply the rules). False for the bootstrap apply, which creates the addresses the certificates are issued for."
  type        = bool
  default     = true
}

variable "meridian_url" {
  description = "HTTPS URL of the linux amd64 `meridian` binary the nodes install at first boot."
  type        = string
}

variable "meridian_sha256" {
  description = "SHA-256 (hex) of that binary."
  type        = string
}

variable "meridian_cli" {
  description = "How to run `meridian` on the machine running Terraform (applies the residency rules)."
  type        = string
  default     = "meridian"
}

variable "instance_type" {
  description = "EC2 instance type of the nodes."
  type        = string
  default     = "m7i.large"
}

variable "data_volume_gb" {
  description = "Size of each node's data volume in GiB."
  type        = number
  default     = 100
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "deletion_protection" {
  description = "Protect the load balancers from deletion: set false and apply before `terraform destroy`."
  type        = bool
  default     = true
}
