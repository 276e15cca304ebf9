variable "cluster_id" {
  description = "The cluster's id (`cluster_id` in every node's config, and in its CA and certificates): 1-64 characters of [A-Za-z0-9-_.]."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,64}$", var.cluster_id))
    error_message = "cluster_id must be 1-64 characters of [A-Za-z0-9-_.] (the node refuses anything else)."
  }
}

variable "regions" {
  description = <<-EOT
    The cluster's regions, by name. Each region lists its nodes explicitly (`nodes`: name, zone, address,
    optionally its own ports) or gives a `node_count` (nodes `<region>-n1` … dealt round-robin over `zones`,
    default `<region>-a`, `-b`, `-c`, all at `address`). `endpoint` is the host clients use for the region (a
    load balancer's DNS name, say; default: the first node's address): it is put in every node certificate of
    the region. `rf` overrides var.rf for the region.
  EOT
  type = map(object({
    nodes = optional(list(object({
      name        = string
      zone        = string
      address     = string
      client_port = optional(number)
      http_port   = optional(number)
      peer_port   = optional(number)
    })), [])
    node_count = optional(number, 0)
    zones      = optional(list(string), [])
    address    = optional(string, "127.0.0.1")
    endpoint   = optional(string)
    rf         = optional(number)
  }))

  validation {
    condition     = length(var.regions) > 0
    error_message = "regions: a cluster needs at least one region."
  }
  validation {
    condition     = alltrue([for name in keys(var.regions) : can(regex("^[A-Za-z0-9._-]{1,64}$", name))])
    error_message = "regions: every region name must be 1-64 characters of [A-Za-z0-9-_.]."
  }
  validation {
    condition     = alltrue([for name, r in var.regions : (length(r.nodes) > 0) != (r.node_count > 0)])
    error_message = "regions: each region needs either a non-empty `nodes` list or a positive `node_count`, not both."
  }
  validation {
    condition = alltrue(flatten([for name, r in var.regions : [
      for n in r.nodes : can(regex("^[A-Za-z0-9._-]{1,64}$", n.name)) && can(regex("^[A-Za-z0-9._-]{1,64}$", n.zone))
    ]]))
    error_message = "regions[*].nodes: every node name and zone must be 1-64 characters of [A-Za-z0-9-_.]."
  }
  validation {
    condition     = alltrue(flatten([for name, r in var.regions : [for z in r.zones : can(regex("^[A-Za-z0-9._-]{1,64}$", z))]]))
    error_message = "regions[*].zones: every zone must be 1-64 characters of [A-Za-z0-9-_.]."
  }
  validation {
    condition = alltrue(flatten([for name, r in var.regions : concat(
      [for n in r.nodes : can(cidrhost("${n.address}/32", 0)) || can(cidrhost("${n.address}/128", 0))],
      [can(cidrhost("${r.address}/32", 0)) || can(cidrhost("${r.address}/128", 0))]
    )]))
    error_message = "regions[*].nodes[*].address / regions[*].address: a node's address must be an IPv4 or IPv6 literal (the node's config holds socket addresses, not host names)."
  }
  validation {
    # Generated names (<region>-nI) and explicit ones together must be unique across the cluster:
    # node names identify nodes in placement, certificates and `dial_via`.
    condition = length(distinct(flatten([for name, r in var.regions :
      length(r.nodes) > 0 ? [for n in r.nodes : n.name] : [for i in range(r.node_count) : "${name}-n${i + 1}"]
      ]))) == length(flatten([for name, r in var.regions :
      length(r.nodes) > 0 ? [for n in r.nodes : n.name] : [for i in range(r.node_count) : "${name}-n${i + 1}"]
    ]))
    error_message = "regions[*].nodes[*].name: node names must be unique across the cluster; given more than once: ${join(", ", [for name, count in { for n in flatten([for region, r in var.regions : length(r.nodes) > 0 ? [for n in r.nodes : n.name] : [for i in range(r.node_count) : "${region}-n${i + 1}"]]) : n => n... } : name if length(count) > 1])}."
  }
  validation {
    condition = alltrue([for name, r in var.regions :
      r.rf == null ? true : (r.rf >= 1 && r.rf <= max(length(r.nodes), r.node_count))
    ])
    error_message = "regions[*].rf: a region's rf must be at least 1 and at most its number of nodes (${join(", ", [for name, r in var.regions : "${name}: rf ${r.rf}, ${max(length(r.nodes), r.node_count)} nodes" if r.rf != null])})."
  }
  validation {
    condition = alltrue(flatten([for name, r in var.regions : [
      for n in r.nodes : [for p in [n.client_port, n.http_port, n.peer_port] : p == null ? true : (p >= 1 && p <= 65535)]
    ]]))
    error_message = "regions[*].nodes[*].*_port: ports must be within 1-65535."
  }
}

variable "rf" {
  description = "Replicas of each partition in a region (`peer.rf`), unless the region sets its own `rf`. It may not exceed the node count of any region that uses it."
  type        = number
  default     = 3

  validation {
    condition     = var.rf >= 1 && floor(var.rf) == var.rf
    error_message = "rf must be a whole number of at least 1."
  }
  validation {
    condition = alltrue([for name, r in var.regions :
      r.rf != null || var.rf <= max(length(r.nodes), r.node_count)
    ])
    error_message = "rf = ${var.rf} is above the node count of region ${join(", ", [for name, r in var.regions : "${name} (${max(length(r.nodes), r.node_count)} nodes)" if r.rf == null && var.rf > max(length(r.nodes), r.node_count)])}: set that region's rf, lower rf, or add nodes."
  }
}

variable "durability" {
  description = "`storage.durability` of every node: `fsync` (an acknowledged write is on disk) or `relaxed` (a power loss may lose up to `storage.relaxed_sync_interval_ms`; docs/config.md)."
  type        = string
  default     = "fsync"

  validation {
    condition     = contains(["fsync", "relaxed"], var.durability)
    error_message = "durability must be \"fsync\" or \"relaxed\"."
  }
}

variable "default_consistency" {
  description = "Consistency of requests that choose none, in namespaces without their own: eventual, causal, local_quorum or quorum."
  type        = string
  default     = "eventual"

  validation {
    condition     = contains(["eventual", "causal", "local_quorum", "quorum"], var.default_consistency)
    error_message = "default_consistency must be one of eventual, causal, local_quorum, quorum."
  }
}

variable "namespaces" {
  description = "Per-namespace settings, by namespace name: `consistency` is the namespace's default level (eventual, causal, local_quorum, quorum)."
  type = map(object({
    consistency = string
  }))
  default = {}

  validation {
    condition = alltrue([for name, ns in var.namespaces :
      length(name) > 0 && length(name) <= 128 && !strcontains(name, "/")
    ])
    error_message = "namespaces: a namespace name must be 1-128 bytes without '/'."
  }
  validation {
    condition     = alltrue([for name, ns in var.namespaces : contains(["eventual", "causal", "local_quorum", "quorum"], ns.consistency)])
    error_message = "namespaces[*].consistency must be one of eventual, causal, local_quorum, quorum."
  }
}

variable "residency_rules" {
  description = <<-EOT
    Data-residency rules, in match order (first match wins; keys matching none may live in every region):
    keys of `namespace` whose names start with `prefix` live only in `regions`; a request arriving elsewhere is
    proxied to `home` (default: the nearest allowed region) or, with `strict`, refused. Rendered as the
    document `meridian residency apply` takes (output `residency_rules_json`).
  EOT
  type = list(object({
    namespace = string
    prefix    = optional(string, "")
    regions   = list(string)
    home      = optional(string)
    strict    = optional(bool, false)
  }))
  default = []

  validation {
    condition     = alltrue([for r in var.residency_rules : length(r.namespace) > 0 && length(r.namespace) <= 128 && !strcontains(r.namespace, "/")])
    error_message = "residency_rules[*].namespace must be 1-128 bytes without '/'."
  }
  validation {
    condition     = alltrue([for r in var.residency_rules : length(r.regions) > 0])
    error_message = "residency_rules[*].regions: a rule must name at least one region."
  }
  validation {
    condition     = alltrue(flatten([for r in var.residency_rules : [for region in r.regions : contains(keys(var.regions), region)]]))
    error_message = "residency_rules[*].regions: ${join(", ", distinct(flatten([for r in var.residency_rules : [for region in r.regions : region if !contains(keys(var.regions), region)]])))} is not a region of var.regions (${join(", ", sort(keys(var.regions)))}); the cluster refuses rules naming unknown regions."
  }
  validation {
    condition     = alltrue([for r in var.residency_rules : r.home == null ? true : contains(r.regions, r.home)])
    error_message = "residency_rules[*].home must be one of the rule's regions (${join(", ", [for r in var.residency_rules : "${r.namespace}/${r.prefix}: home ${r.home}" if r.home != null && !contains(r.regions, coalesce(r.home, "-"))])})."
  }
  validation {
    condition     = length(distinct([for r in var.residency_rules : "${r.namespace}/${r.prefix}"])) == length(var.residency_rules)
    error_message = "residency_rules: two rules have the same namespace and prefix (the cluster keeps one rule per namespace and prefix)."
  }
}

variable "auth" {
  description = <<-EOT
    Client authentication (docs/security.md). On by default, as for every cluster Meridian creates: clients
    present a client certificate from the cluster CA or a bearer token, and HTTP is served over TLS. `admins`
    are the principals that are cluster admins from the start (issue one a certificate with
    `meridian certs client --name admin`). Turning it off on a node reachable beyond loopback needs
    `allow_unauthenticated_network = true`, or the node refuses to start.
  EOT
  type = object({
    enabled                       = optional(bool, true)
    admins                        = optional(list(string), ["admin"])
    allow_unauthenticated_network = optional(bool, false)
    metrics_require_token         = optional(bool, false)
  })
  default = {}

  validation {
    condition     = alltrue([for a in var.auth.admins : can(regex("^[A-Za-z0-9._-]{1,64}$", a))])
    error_message = "auth.admins: every admin name must be 1-64 characters of [A-Za-z0-9-_.]."
  }
  validation {
    condition = var.auth.enabled || var.auth.allow_unauthenticated_network || alltrue(flatten([
      [var.listen_address == null ? true : startswith(var.listen_address, "127.") || var.listen_address == "::1"],
      [for name, r in var.regions : concat(
        [for n in r.nodes : startswith(n.address, "127.") || n.address == "::1"],
        length(r.nodes) > 0 ? [] : [startswith(r.address, "127.") || r.address == "::1"]
      )]
    ]))
    error_message = "auth.enabled: authentication is off and nodes listen beyond loopback, which the node refuses: turn auth on, or set auth.allow_unauthenticated_network = true to run open on purpose."
  }
}

variable "listen_address" {
  description = "The IP every node binds its ports to (e.g. 0.0.0.0 behind NAT or an elastic IP); the node's `address` is then advertised to peers (`peer.advertise`). Null: bind the node's own address."
  type        = string
  default     = null

  validation {
    condition     = var.listen_address == null ? true : (can(cidrhost("${var.listen_address}/32", 0)) || can(cidrhost("${var.listen_address}/128", 0)))
    error_message = "listen_address must be an IPv4 or IPv6 literal (or null)."
  }
}

variable "ports" {
  description = "Ports of every node (client QUIC, HTTP, peer QUIC), unless the node sets its own. With `port_stride`, node k (counted across the cluster from 0, regions in name order) adds k × port_stride: how several nodes share one machine."
  type = object({
    client = optional(number, 7400)
    http   = optional(number, 7480)
    peer   = optional(number, 7402)
  })
  default = {}

  validation {
    condition     = alltrue([for p in [var.ports.client, var.ports.http, var.ports.peer] : p >= 1 && p <= 65535])
    error_message = "ports: each of client, http and peer must be within 1-65535."
  }
  validation {
    condition     = length(distinct([var.ports.client, var.ports.http, var.ports.peer])) == 3
    error_message = "ports: client, http and peer must be three different ports."
  }
}

variable "port_stride" {
  description = "Added to the ports once per node (see `ports`): 0 when every node has its own address, e.g. 10 for a cluster of processes on one machine."
  type        = number
  default     = 0

  validation {
    condition     = var.port_stride >= 0 && floor(var.port_stride) == var.port_stride
    error_message = "port_stride must be a whole number, 0 or more."
  }
}

variable "paths" {
  description = "Where each node finds its files; `{node}` is replaced by the node's name. The certificate and key are the node's, issued by `meridian certs node` for the identity in output `certificate_identities`."
  type = object({
    data_dir  = optional(string, "/var/lib/meridian")
    ca_cert   = optional(string, "/etc/meridian/certs/ca.crt")
    node_cert = optional(string, "/etc/meridian/certs/node.crt")
    node_key  = optional(string, "/etc/meridian/certs/node.key")
    revoked   = optional(string)
  })
  default = {}

  validation {
    condition     = alltrue([for p in [var.paths.data_dir, var.paths.ca_cert, var.paths.node_cert, var.paths.node_key] : length(p) > 0])
    error_message = "paths: data_dir, ca_cert, node_cert and node_key must be non-empty."
  }
}

variable "wan_links" {
  description = "Addresses (`ip:port`) to dial instead of a node's own, per dialling region: `{ <region> = { <remote node> = \"ip:port\" } }`. Becomes `peer.dial_via` of the region's nodes, for a relay, NAT or proxy between regions (the local example puts `meridian demo`'s WAN relay there)."
  type        = map(map(string))
  default     = {}

  validation {
    condition     = alltrue([for region, links in var.wan_links : contains(keys(var.regions), region)])
    error_message = "wan_links: a key is not a region of var.regions."
  }
  validation {
    condition     = alltrue(flatten([for region, links in var.wan_links : [for node, addr in links : can(regex("^(\\d+\\.\\d+\\.\\d+\\.\\d+|\\[[0-9A-Fa-f:]+\\]):\\d{1,5}$", addr))]]))
    error_message = "wan_links[*][*]: every address must be an ip:port socket address (IPv6 in brackets)."
  }
}

variable "extra_cert_hosts" {
  description = "DNS names or IPs added to every node certificate's hosts (e.g. `localhost`, the SDK's default server name)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for h in var.extra_cert_hosts : can(regex("^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$", h)) || can(cidrhost("${h}/32", 0))])
    error_message = "extra_cert_hosts: every host must be a DNS name (no wildcard) or an IPv4 address, as meridian certs node accepts."
  }
}

variable "users" {
  description = "Users and their role per namespace (`*`: every namespace): read, write or admin. Rendered as the document `meridian auth apply` takes (output `users_json`). Tokens are made with `meridian auth token create`, not here (a token's secret is shown once)."
  type        = map(map(string))
  default     = {}

  validation {
    condition     = alltrue([for name, roles in var.users : can(regex("^[A-Za-z0-9._-]{1,64}$", name))])
    error_message = "users: every user name must be 1-64 characters of [A-Za-z0-9-_.] (as client certificate names)."
  }
  validation {
    condition     = alltrue(flatten([for name, roles in var.users : [for ns, role in roles : contains(["read", "write", "admin"], role)]]))
    error_message = "users[*][*]: a role must be read, write or admin."
  }
  validation {
    condition     = alltrue(flatten([for name, roles in var.users : [for ns, role in roles : ns == "*" || (length(ns) > 0 && length(ns) <= 128 && !strcontains(ns, "/"))]]))
    error_message = "users[*]: a namespace must be `*` or 1-128 bytes without '/'."
  }
}
