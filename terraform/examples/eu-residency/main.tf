# Two EU regions and one in the US; keys under users/eu/ live only in the EU regions. A request for
# such a key arriving in us-east is proxied to eu-west (set strict = true to refuse it instead).
provider "aws" {
  region = "eu-west-1"
}

module "meridian" {
  source = "../.."

  cluster_id = var.cluster_id
  regions = {
    "eu-west"    = { aws_region = "eu-west-1", zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"] }
    "eu-central" = { aws_region = "eu-central-1", zones = ["eu-central-1a", "eu-central-1b", "eu-central-1c"] }
    "us-east"    = { aws_region = "us-east-1", zones = ["us-east-1a", "us-east-1b", "us-east-1c"] }
  }
  residency_rules = [
    { namespace = "users", prefix = "eu/", regions = ["eu-west", "eu-central"], home = "eu-west" },
  ]
  namespaces          = { users = { consistency = "causal" } }
  client_cidrs        = var.client_cidrs
  launch_nodes        = var.launch_nodes
  deletion_protection = var.deletion_protection
  meridian_url        = var.meridian_url
  meridian_sha256     = var.meridian_sha256
}
