variable "meridian" {
  description = "How to run the `meridian` binary (a path, or a command on PATH): it issues the certificates, checks the configs and applies the rules."
  type        = string
  default     = "meridian"

  validation {
    condition     = length(var.meridian) > 0
    error_message = "meridian must name the binary."
  }
}

variable "dir" {
  description = "Where the cluster's files go: certs/ (CA, node and admin certificates) and <node>/meridian.toml; each node's data goes to <node>/data. Default: run/ beside this example."
  type        = string
  default     = null

  validation {
    condition     = var.dir == null ? true : length(var.dir) > 0
    error_message = "dir must be a non-empty path (or null for run/ beside the example)."
  }
}

variable "cluster_id" {
  description = "The cluster's id."
  type        = string
  default     = "local"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,64}$", var.cluster_id))
    error_message = "cluster_id must be 1-64 characters of [A-Za-z0-9-_.]."
  }
}

variable "regions" {
  description = "The regions, each run as processes on this machine."
  type        = list(string)
  default     = ["us-east", "eu-west", "ap-south"]

  validation {
    condition     = length(var.regions) > 0 && length(distinct(var.regions)) == length(var.regions)
    error_message = "regions must list at least one region, each once."
  }
}

variable "nodes_per_region" {
  description = "Nodes in each region (`<region>-n1` …)."
  type        = number
  default     = 3

  validation {
    condition     = var.nodes_per_region >= 1 && var.nodes_per_region <= 9
    error_message = "nodes_per_region must be within 1-9."
  }
}

variable "rf" {
  description = "Replicas of each partition per region (at most nodes_per_region)."
  type        = number
  default     = 3

  validation {
    condition     = var.rf >= 1 && var.rf <= var.nodes_per_region
    error_message = "rf must be within 1 and nodes_per_region."
  }
}

variable "base_port" {
  description = "Node k (across the cluster, from 0) listens on base_port+10k (client), +1 (HTTP), +2 (peer); WAN relays, when on, on base_port+500, +501, …"
  type        = number
  default     = 7700

  validation {
    condition     = var.base_port >= 1024 && var.base_port <= 64000
    error_message = "base_port must be within 1024-64000."
  }
}

variable "wan_relays" {
  description = "Route traffic between regions through WAN relays (as `meridian demo` does): every node dials other regions' nodes at the addresses in output `wan_relays`, which whoever runs the cluster must serve (the end-to-end test starts them)."
  type        = bool
  default     = false
}

variable "namespaces" {
  description = "Per-namespace default consistency (see modules/cluster)."
  type        = map(object({ consistency = string }))
  default     = {}

  validation {
    condition     = alltrue([for name, ns in var.namespaces : contains(["eventual", "causal", "local_quorum", "quorum"], ns.consistency)])
    error_message = "namespaces[*].consistency must be one of eventual, causal, local_quorum, quorum."
  }
}

variable "residency_rules" {
  description = "Residency rules in match order (see modules/cluster)."
  type = list(object({
    namespace = string
    prefix    = optional(string, "")
    regions   = list(string)
    home      = optional(string)
    strict    = optional(bool, false)
  }))
  default = []

  validation {
    condition     = alltrue([for r in var.residency_rules : length(r.regions) > 0])
    error_message = "residency_rules[*].regions: a rule must name at least one region (modules/cluster checks the rest)."
  }
}

variable "users" {
  description = "Users and their role per namespace (see modules/cluster)."
  type        = map(map(string))
  default     = {}

  validation {
    condition     = alltrue(flatten([for u, roles in var.users : [for ns, role in roles : contains(["read", "write", "admin"], role)]]))
    error_message = "users[*][*]: a role must be read, write or admin."
  }
}

variable "apply_rules" {
  description = "Apply the residency rules and users to the running cluster (`meridian residency apply`, `meridian auth apply`): leave false for the first apply, which writes the files the nodes start from."
  type        = bool
  default     = false
}

variable "rules_wait_seconds" {
  description = "How long applying the rules waits for the cluster to be reachable and know every region."
  type        = number
  default     = 120

  validation {
    condition     = var.rules_wait_seconds >= 0 && var.rules_wait_seconds <= 3600
    error_message = "rules_wait_seconds must be within 0-3600."
  }
}
