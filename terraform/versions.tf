terraform {
  required_version = ">= 1.9.0"
  required_providers {
    # >= 6: the per-resource `region` argument lets one provider configuration (the caller's) serve
    # every region of the cluster.
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.0.0, < 7.0.0"
    }
  }
}
