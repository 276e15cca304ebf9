variable "cluster_id" {
  description = "The cluster's id."
  type        = string
  default     = "meridian-eu"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,64}$", var.cluster_id))
    error_message = "cluster_id must be 1-64 characters of [A-Za-z0-9-_.]."
  }
}

variable "client_cidrs" {
  description = "CIDRs allowed to reach the client ports."
  type        = list(string)

  validation {
    condition     = length(var.client_cidrs) > 0 && alltrue([for c in var.client_cidrs : can(cidrhost(c, 0))])
    error_message = "client_cidrs must list at least one valid IPv4 CIDR."
  }
}

variable "launch_nodes" {
  description = "False for the bootstrap apply (addresses only); true once scripts/issue-certs.sh has issued the certificates."
  type        = bool
  default     = true
}

variable "meridian_url" {
  description = "HTTPS URL of the linux amd64 `meridian` binary."
  type        = string

  validation {
    condition     = startswith(var.meridian_url, "https://")
    error_message = "meridian_url must be an https:// URL."
  }
}

variable "meridian_sha256" {
  description = "SHA-256 of that binary."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.meridian_sha256))
    error_message = "meridian_sha256 must be 64 lowercase hex characters."
  }
}

variable "deletion_protection" {
  description = "Protect the load balancers from deletion: set false and apply before `terraform destroy`."
  type        = bool
  default     = true
}
