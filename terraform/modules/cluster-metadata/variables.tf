variable "rules_json" {
  description = "The residency rules document (output `residency_rules_json` of modules/cluster). The cluster's rules are made exactly these: rules not in it are removed."
  type        = string

  validation {
    condition     = can(jsondecode(var.rules_json).rules)
    error_message = "rules_json must be a JSON object with a `rules` list (modules/cluster's residency_rules_json)."
  }
}

variable "users_json" {
  description = "The users document (output `users_json` of modules/cluster): the cluster's users and their roles are made exactly these (tokens are not managed). Null: users are not managed here."
  type        = string
  default     = null

  validation {
    condition     = var.users_json == null ? true : can(jsondecode(var.users_json).users)
    error_message = "users_json must be a JSON object with a `users` map (modules/cluster's users_json), or null."
  }
}

variable "meridian" {
  description = "How to run the `meridian` CLI on the machine running Terraform (a path or a command on PATH)."
  type        = string
  default     = "meridian"

  validation {
    condition     = length(var.meridian) > 0
    error_message = "meridian must name the CLI."
  }
}

variable "endpoint" {
  description = "host:port of a node's client protocol (QUIC) to apply the rules through; rules are replicated cluster metadata, so any node of the cluster will do."
  type        = string

  validation {
    condition     = can(regex("^.+:\\d{1,5}$", var.endpoint))
    error_message = "endpoint must be host:port."
  }
}

variable "ca_cert" {
  description = "Path of the cluster CA certificate (to trust the node), on the machine running Terraform."
  type        = string

  validation {
    condition     = length(var.ca_cert) > 0
    error_message = "ca_cert must be a path."
  }
}

variable "client_cert" {
  description = "Path of an admin client certificate (`meridian certs client --name admin`), on the machine running Terraform."
  type        = string

  validation {
    condition     = length(var.client_cert) > 0
    error_message = "client_cert must be a path."
  }
}

variable "client_key" {
  description = "Path of that certificate's private key."
  type        = string

  validation {
    condition     = length(var.client_key) > 0
    error_message = "client_key must be a path."
  }
}

variable "wait_seconds" {
  description = "How long each apply keeps retrying while the cluster is not reachable yet or does not know every region of a rule yet (nodes still booting); a refusal that persists fails the apply with the node's error."
  type        = number
  default     = 300

  validation {
    condition     = var.wait_seconds >= 0 && var.wait_seconds <= 3600
    error_message = "wait_seconds must be within 0-3600."
  }
}
