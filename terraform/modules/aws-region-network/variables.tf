variable "region" {
  description = "The AWS region (e.g. eu-west-1) every resource of this module is created in (the AWS provider's per-resource `region` argument)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-\\d$", var.region))
    error_message = "region must be an AWS region name such as eu-west-1."
  }
}

variable "name" {
  description = "The Meridian region this network serves (e.g. eu-west): used in resource names and tags."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,64}$", var.name))
    error_message = "name must be 1-64 characters of [A-Za-z0-9-_.] (a Meridian region name)."
  }
}

variable "cluster_id" {
  description = "The Meridian cluster id (tags and names)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,64}$", var.cluster_id))
    error_message = "cluster_id must be 1-64 characters of [A-Za-z0-9-_.]."
  }
}

variable "nodes" {
  description = "The region's nodes by name, each with its availability zone (which is also its Meridian zone)."
  type = map(object({
    zone = string
  }))

  validation {
    condition     = length(var.nodes) > 0 && alltrue([for name, n in var.nodes : can(regex("^[A-Za-z0-9._-]{1,64}$", name))])
    error_message = "nodes: at least one node, each named with 1-64 characters of [A-Za-z0-9-_.]."
  }
  validation {
    condition     = alltrue([for name, n in var.nodes : can(regex("^[a-z]{2}(-[a-z]+)+-\\d[a-z]$", n.zone))])
    error_message = "nodes[*].zone must be an availability zone name such as eu-west-1a."
  }
}

variable "vpc_cidr" {
  description = "CIDR of the region's VPC; one /24 per availability zone is carved from it."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be an IPv4 CIDR of /20 or larger."
  }
}

variable "client_cidrs" {
  description = "CIDRs allowed to reach the client ports (QUIC client protocol and HTTPS) through the load balancer and on the nodes. Nothing else is opened to clients."
  type        = list(string)

  validation {
    condition     = length(var.client_cidrs) > 0 && alltrue([for c in var.client_cidrs : can(cidrhost(c, 0))])
    error_message = "client_cidrs must list at least one valid IPv4 CIDR (0.0.0.0/0 opens the client ports to everyone: say it explicitly)."
  }
}

variable "ports" {
  description = "The nodes' ports: client (QUIC, UDP), http (HTTPS, TCP) and peer (QUIC, UDP); the same as given to modules/cluster."
  type = object({
    client = optional(number, 7400)
    http   = optional(number, 7480)
    peer   = optional(number, 7402)
  })
  default = {}

  validation {
    condition     = alltrue([for p in [var.ports.client, var.ports.http, var.ports.peer] : p >= 1 && p <= 65535])
    error_message = "ports must be within 1-65535."
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
  description = "Protect the region's load balancer from deletion (set false, apply, then destroy)."
  type        = bool
  default     = true
}
