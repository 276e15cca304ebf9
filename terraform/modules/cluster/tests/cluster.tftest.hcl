# `terraform test` for the cluster module: what it renders (run blocks with assertions) and what its
# validation refuses at plan time (expect_failures), offline and without any provider.

variables {
  cluster_id = "prod"
  regions = {
    "us-east"  = { node_count = 3 }
    "eu-west"  = { node_count = 3, zones = ["eu-west-1a", "eu-west-1b"] }
    "ap-south" = { node_count = 3 }
  }
  ports       = { client = 7400, http = 7401, peer = 7402 }
  port_stride = 10
  namespaces  = { orders = { consistency = "local_quorum" } }
  users       = { shop = { orders = "write", "*" = "read" } }
  residency_rules = [
    { namespace = "users", prefix = "eu/", regions = ["eu-west"], home = "eu-west" },
    { namespace = "audit", regions = ["us-east", "eu-west"], strict = true },
  ]
}

run "renders_a_three_region_cluster" {
  command = apply

  assert {
    condition     = length(output.node_configs) == 9 && output.regions == tolist(["ap-south", "eu-west", "us-east"])
    error_message = "nine configs over three regions"
  }
  assert {
    condition     = strcontains(output.node_configs["eu-west-n3"], "zone = \"eu-west-1a\"") && strcontains(output.node_configs["us-east-n2"], "zone = \"us-east-b\"")
    error_message = "zones are dealt round-robin from the region's list, or <region>-a/b/c"
  }
  assert {
    # ap-south sorts first: its nodes are 0-2, eu-west 3-5, us-east 6-8 (port_stride 10).
    condition     = strcontains(output.node_configs["eu-west-n1"], "client = \"127.0.0.1:7430\"") && strcontains(output.node_configs["eu-west-n1"], "listen = \"127.0.0.1:7432\"")
    error_message = "ports follow the node's index across the cluster"
  }
  assert {
    condition     = length(output.seeds["us-east-n1"]) == 4 && contains(output.seeds["us-east-n1"], "127.0.0.1:7472") && contains(output.seeds["us-east-n1"], "127.0.0.1:7402") && !contains(output.seeds["us-east-n1"], "127.0.0.1:7462")
    error_message = "seeds: the two other nodes of the region and the first node of each other region, never itself"
  }
  assert {
    condition     = strcontains(output.node_configs["ap-south-n1"], "[auth]\nenabled = true\nadmins = [\"admin\"]")
    error_message = "authentication on by default with the admin principal"
  }
  assert {
    condition     = strcontains(output.node_configs["ap-south-n1"], "[namespaces.\"orders\"]\nconsistency = \"local_quorum\"") && strcontains(output.node_configs["ap-south-n1"], "rf = 3")
    error_message = "namespaces and rf rendered"
  }
  assert {
    condition     = !strcontains(output.node_configs["ap-south-n1"], "advertise") && !strcontains(output.node_configs["ap-south-n1"], "dial_via")
    error_message = "no advertise when binding the node's own address, no dial_via without links"
  }
  assert {
    condition = jsondecode(output.residency_rules_json) == {
      format = 1
      rules = [
        { namespace = "users", prefix = "eu/", regions = ["eu-west"], home = "eu-west", strict = false },
        { namespace = "audit", prefix = "", regions = ["us-east", "eu-west"], home = null, strict = true },
      ]
    }
    error_message = "the rules document keeps the rules' order and fills defaults"
  }
  assert {
    condition     = output.certificate_identities["eu-west-n2"].uri == "urn:meridian:cluster:prod:region:eu-west:zone:eu-west-1b:node:eu-west-n2" && output.certificate_identities["eu-west-n2"].hosts == tolist(["127.0.0.1"])
    error_message = "the certificate identity matches the config's cluster/region/zone/name"
  }
  assert {
    condition     = output.client_endpoints["us-east"].quic == "127.0.0.1:7460" && output.client_endpoints["us-east"].http == "https://127.0.0.1:7461" && length(output.client_endpoints["us-east"].nodes) == 3
    error_message = "client endpoints per region"
  }
  assert {
    # Node names sort ap-south-n1..3, eu-west-n1..3, us-east-n1..3; us-east-n1 has index 6 (http 7401 + 60).
    condition     = length(output.prometheus_targets) == 9 && jsonencode(output.prometheus_targets[6]) == jsonencode({ labels = { node = "us-east-n1", region = "us-east", zone = "us-east-a" }, targets = ["127.0.0.1:7461"] })
    error_message = "a Prometheus file_sd target per node: its HTTP address, labelled with region, node and zone"
  }
}

run "renders_the_users_document" {
  command = plan

  assert {
    condition     = jsondecode(output.users_json) == { format = 1, users = { shop = { orders = "write", "*" = "read" } } }
    error_message = "the users document `meridian auth apply` takes"
  }
}

run "refuses_an_unknown_role" {
  command = plan
  variables {
    users = { shop = { orders = "owner" } }
  }
  expect_failures = [var.users]
}

run "refuses_a_bad_user_name" {
  command = plan
  variables {
    users = { "the shop" = { orders = "read" } }
  }
  expect_failures = [var.users]
}

run "explicit_nodes_behind_nat_with_links" {
  command = plan

  variables {
    regions = {
      "eu-west" = {
        endpoint = "eu.example.net"
        rf       = 2
        nodes = [
          { name = "eu1", zone = "eu-west-1a", address = "203.0.113.1" },
          { name = "eu2", zone = "eu-west-1b", address = "203.0.113.2" },
        ]
      }
      "us-east" = { nodes = [{ name = "us1", zone = "us-east-1a", address = "198.51.100.1", peer_port = 9000 }], rf = 1 }
    }
    listen_address   = "0.0.0.0"
    port_stride      = 0
    wan_links        = { "eu-west" = { us1 = "10.9.9.9:9999" } }
    extra_cert_hosts = ["localhost"]
    residency_rules  = []
    paths            = { data_dir = "/data/{node}", revoked = "/etc/meridian/revoked.txt" }
  }

  assert {
    condition     = strcontains(output.node_configs["eu1"], "listen = \"0.0.0.0:7402\"\nadvertise = \"203.0.113.1:7402\"") && strcontains(output.node_configs["eu1"], "client = \"0.0.0.0:7400\"")
    error_message = "binds listen_address and advertises the node's address"
  }
  assert {
    condition     = output.seeds["eu1"] == ["203.0.113.2:7402", "10.9.9.9:9999"] && output.seeds["us1"] == ["203.0.113.1:7402"]
    error_message = "a remote region is seeded through its WAN link when there is one"
  }
  assert {
    condition     = strcontains(output.node_configs["eu2"], "[peer.dial_via]\n\"us1\" = \"10.9.9.9:9999\"") && !strcontains(output.node_configs["us1"], "dial_via")
    error_message = "wan_links become the dialling region's peer.dial_via"
  }
  assert {
    condition     = strcontains(output.node_configs["eu2"], "rf = 2") && strcontains(output.node_configs["us1"], "rf = 1") && strcontains(output.node_configs["us1"], "listen = \"0.0.0.0:9000\"")
    error_message = "per-region rf and per-node ports"
  }
  assert {
    condition     = strcontains(output.node_configs["eu2"], "data_dir = \"/data/eu2\"") && strcontains(output.node_configs["eu2"], "revoked = \"/etc/meridian/revoked.txt\"")
    error_message = "paths with {node} and the revocation list"
  }
  assert {
    condition     = output.certificate_identities["eu1"].hosts == tolist(["203.0.113.1", "eu.example.net", "localhost"]) && output.client_endpoints["eu-west"].quic == "eu.example.net:7400" && output.client_endpoints["eu-west"].server_name == "eu.example.net"
    error_message = "the region endpoint is a certificate host and the client endpoint"
  }
  assert {
    condition     = jsonencode(output.prometheus_targets[0]) == jsonencode({ labels = { node = "eu1", region = "eu-west", zone = "eu-west-1a" }, targets = ["203.0.113.1:7401"] })
    error_message = "Prometheus scrapes a node at its own address, not at listen_address"
  }
  assert {
    condition     = jsondecode(output.residency_rules_json) == { format = 1, rules = [] }
    error_message = "no rules: an empty document (which removes every rule when applied)"
  }
}

run "auth_off_on_loopback_is_allowed" {
  command = plan
  variables {
    auth = { enabled = false }
  }
  assert {
    condition     = strcontains(output.node_configs["us-east-n1"], "enabled = false")
    error_message = "auth off rendered"
  }
}

# What the node (or the cluster) would refuse, refused at plan time instead.

run "refuses_a_bad_cluster_id" {
  command = plan
  variables { cluster_id = "a:b" }
  expect_failures = [var.cluster_id]
}

run "refuses_an_unknown_region_in_a_rule" {
  command = plan
  variables {
    residency_rules = [{ namespace = "users", prefix = "eu/", regions = ["eu-central"] }]
  }
  expect_failures = [var.residency_rules]
}

run "refuses_a_home_outside_the_rule" {
  command = plan
  variables {
    residency_rules = [{ namespace = "users", regions = ["eu-west"], home = "us-east" }]
  }
  expect_failures = [var.residency_rules]
}

run "refuses_two_rules_for_one_prefix" {
  command = plan
  variables {
    residency_rules = [
      { namespace = "users", prefix = "eu/", regions = ["eu-west"] },
      { namespace = "users", prefix = "eu/", regions = ["us-east"] },
    ]
  }
  expect_failures = [var.residency_rules]
}

run "refuses_rf_above_a_region_node_count" {
  command = plan
  variables {
    rf = 4
  }
  expect_failures = [var.rf]
}

run "refuses_a_region_rf_above_its_node_count" {
  command = plan
  variables {
    regions = { "eu-west" = { node_count = 2, rf = 3 } }
  }
  expect_failures = [var.regions]
}

run "refuses_duplicate_node_names" {
  command = plan
  variables {
    regions = {
      "eu-west" = { nodes = [{ name = "n1", zone = "a", address = "10.0.0.1" }], rf = 1 }
      "us-east" = { nodes = [{ name = "n1", zone = "a", address = "10.0.1.1" }], rf = 1 }
    }
    residency_rules = []
  }
  expect_failures = [var.regions]
}

run "refuses_a_host_name_as_node_address" {
  command = plan
  variables {
    regions         = { "eu-west" = { nodes = [{ name = "n1", zone = "a", address = "node1.example.net" }], rf = 1 } }
    residency_rules = []
  }
  expect_failures = [var.regions]
}

run "refuses_nodes_and_node_count_together" {
  command = plan
  variables {
    regions         = { "eu-west" = { node_count = 1, rf = 1, nodes = [{ name = "n1", zone = "a", address = "10.0.0.1" }] } }
    residency_rules = []
  }
  expect_failures = [var.regions]
}

run "refuses_an_unknown_consistency" {
  command = plan
  variables {
    namespaces          = { orders = { consistency = "strong" } }
    default_consistency = "linearizable"
  }
  expect_failures = [var.namespaces, var.default_consistency]
}

run "refuses_an_unknown_durability" {
  command = plan
  variables { durability = "sometimes" }
  expect_failures = [var.durability]
}

run "refuses_auth_off_beyond_loopback" {
  command = plan
  variables {
    auth           = { enabled = false }
    listen_address = "0.0.0.0"
  }
  expect_failures = [var.auth]
}

run "refuses_a_bad_admin_name" {
  command = plan
  variables {
    auth = { admins = ["the admin"] }
  }
  expect_failures = [var.auth]
}

run "refuses_two_nodes_on_one_port" {
  command = plan
  variables {
    port_stride = 0
  }
  expect_failures = [output.node_configs]
}

run "refuses_a_link_to_an_unknown_node" {
  command = plan
  variables {
    wan_links = { "eu-west" = { "mars-n1" = "127.0.0.1:9000" } }
  }
  expect_failures = [output.node_configs]
}
