# The configuration ../../main.tf gives modules/cluster for AWS (addresses are elastic IPs, bind
# 0.0.0.0, the load balancer's name as endpoint), rendered into the cloud-init template of
# modules/aws-region exactly as aws_instance.user_data renders it.
module "cluster" {
  source = "../../modules/cluster"

  cluster_id = "aws-static"
  regions = {
    "eu-west" = {
      endpoint = "mrd-aws-static-eu-west-0123456789.elb.eu-west-1.amazonaws.com"
      nodes = [
        { name = "eu-west-n1", zone = "eu-west-1a", address = "203.0.113.10" },
        { name = "eu-west-n2", zone = "eu-west-1b", address = "203.0.113.11" },
        { name = "eu-west-n3", zone = "eu-west-1c", address = "203.0.113.12" },
      ]
    }
    "us-east" = {
      endpoint = "mrd-aws-static-us-east-0123456789.elb.us-east-1.amazonaws.com"
      nodes = [
        { name = "us-east-n1", zone = "us-east-1a", address = "198.51.100.10" },
        { name = "us-east-n2", zone = "us-east-1b", address = "198.51.100.11" },
        { name = "us-east-n3", zone = "us-east-1c", address = "198.51.100.12" },
      ]
    }
  }
  listen_address   = "0.0.0.0"
  ports            = { client = 7400, http = 7480, peer = 7402 }
  extra_cert_hosts = ["localhost"]
  residency_rules  = [{ namespace = "users", prefix = "eu/", regions = ["eu-west"] }]
}

output "user_data" {
  description = "Each node's cloud-init user data, by node name."
  value = { for name, config in module.cluster.node_configs : name => templatefile("${path.module}/../../modules/aws-region/templates/cloud-init.yaml.tftpl", {
    config          = config
    ca_cert_pem     = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
    cert_pem        = "-----BEGIN CERTIFICATE-----\n${name}\n-----END CERTIFICATE-----\n"
    key_pem         = "-----BEGIN PRIVATE KEY-----\n${name}\n-----END PRIVATE KEY-----\n"
    meridian_url    = var.meridian_url
    meridian_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
    data_device     = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0"
  }) }
}

output "certificate_identities" {
  description = "The identities scripts/issue-certs.sh issues certificates for (checked offline by scripts/terraform_static_checks.py)."
  value       = module.cluster.certificate_identities
}
