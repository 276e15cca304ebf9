# Three regions, three nodes each, one per availability zone. One provider configuration serves every
# region: each resource names its own (AWS provider >= 6).
provider "aws" {
  region = "us-east-1"
}

module "meridian" {
  source = "../.."

  cluster_id = var.cluster_id
  regions = {
    "us-east"  = { aws_region = "us-east-1", zones = ["us-east-1a", "us-east-1b", "us-east-1c"] }
    "eu-west"  = { aws_region = "eu-west-1", zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"] }
    "ap-south" = { aws_region = "ap-south-1", zones = ["ap-south-1a", "ap-south-1b", "ap-south-1c"] }
  }
  rf                  = 3
  namespaces          = { orders = { consistency = "local_quorum" } }
  client_cidrs        = var.client_cidrs
  launch_nodes        = var.launch_nodes
  deletion_protection = var.deletion_protection
  meridian_url        = var.meridian_url
  meridian_sha256     = var.meridian_sha256
}
