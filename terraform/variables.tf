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

  validation {
    condition     = var.rf >= 1 && floor(var.rf) == var.rf
    error_message = "rf must be a whole number of at least 1."
  }
}

variable "durability" {
  description = "`storage.durability` of every node: fsync or relaxed."
  type        = string
  default     = "fsync"

  validation {
    condition     = contains(["fsync", "relaxed"], var.durability)
    error_message = "durability must be \"fsync\" or \"relaxed\"."
  }
}

variable "default_consistency" {
  description = "Consistency of requests that choose none: eventual, causal, local_quorum or quorum."
  type        = string
  default     = "eventual"

  validation {
    condition     = contains(["eventual", "causal", "local_quorum", "quorum"], var.default_consistency)
    error_message = "default_consistency must be one of eventual, causal, local_quorum, quorum."
  }
}

variable "namespaces" {
  description = "Per-namespace default consistency, by namespace."
  type        = map(object({ consistency = string }))
  default     = {}

  validation {
    condition     = alltrue([for name, ns in var.namespaces : contains(["eventual", "causal", "local_quorum", "quorum"], ns.consistency)])
    error_message = "namespaces[*].consistency must be one of eventual, causal, local_quorum, quorum."
  }
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

  validation {
    condition     = alltrue(flatten([for r in var.residency_rules : [for region in r.regions : contains(keys(var.regions), region)]]))
    error_message = "residency_rules[*].regions names a region that is not in var.regions."
  }
}

variable "users" {
  description = "Users and their role per namespace (`*`: every namespace): read, write or admin, applied with `meridian auth apply`. Make their tokens with `meridian auth token create`, or issue client certificates named after them."
  type        = map(map(string))
  default     = {}

  validation {
    condition     = alltrue(flatten([for u, roles in var.users : [for ns, role in roles : contains(["read", "write", "admin"], role)]]))
    error_message = "users[*][*]: a role must be read, write or admin."
  }
}

variable "admins" {
  description = "Principals that are cluster admins from the start (the bootstrap issues `admin`'s client certificate)."
  type        = list(string)
  default     = ["admin"]

  validation {
    condition     = length(var.admins) > 0 && alltrue([for a in var.admins : can(regex("^[A-Za-z0-9._-]{1,64}$", a))])
    error_message = "admins: at least one admin, each 1-64 characters of [A-Za-z0-9-_.] (the bootstrap issues admin's certificate)."
  }
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

  validation {
    condition     = length(var.certificates_dir) > 0
    error_message = "certificates_dir must be a path."
  }
}

variable "launch_nodes" {
  description = "Create the instances (and apply the rules). False for the bootstrap apply, which creates the addresses the certificates are issued for."
  type        = bool
  default     = true
}

variable "meridian_url" {
  description = "HTTPS URL of the linux amd64 `meridian` binary the nodes install at first boot."
  type        = string

  validation {
    condition     = startswith(var.meridian_url, "https://")
    error_message = "meridian_url must be an https:// URL."
  }
}

variable "meridian_sha256" {
  description = "SHA-256 (hex) of that binary."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.meridian_sha256))
    error_message = "meridian_sha256 must be 64 lowercase hex characters."
  }
}

variable "meridian_cli" {
  description = "How to run `meridian` on the machine running Terraform (applies the residency rules)."
  type        = string
  default     = "meridian"

  validation {
    condition     = length(var.meridian_cli) > 0
    error_message = "meridian_cli must name the CLI."
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
  description = "Size of each node's data volume in GiB."
  type        = number
  default     = 100

  validation {
    condition     = var.data_volume_gb >= 8 && var.data_volume_gb <= 16384
    error_message = "data_volume_gb must be within 8-16384."
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

variable "deletion_protection" {
  description = "Protect the load balancers from deletion: set false and apply before `terraform destroy`."
  type        = bool
  default     = true
}
