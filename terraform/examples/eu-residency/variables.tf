variable "cluster_id" {
  description = "The cluster's id."
  type        = string
  default     = "meridian-eu"
}

variable "client_cidrs" {
  description = "CIDRs allowed to reach the client ports."
  type        = list(string)
}

variable "launch_nodes" {
  description = "False for the bootstrap apply (addresses only); true once scripts/issue-certs.sh has issued the certificates."
  type        = bool
  default     = true
}

variable "meridian_url" {
  description = "HTTPS URL of the linux amd64 `meridian` binary."
  type        = string
}

variable "meridian_sha256" {
  description = "SHA-256 of that binary."
  type        = string
}

variable "deletion_protection" {
  description = "Protect the load balancers from deletion: set false and apply before `terraform destroy`."
  type        = bool
  default     = true
}
