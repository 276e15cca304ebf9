terraform {
  required_version = ">= 1.9.0"
  required_providers {
    # 6.x: every resource takes a `region` argument, so one provider configuration serves every
    # region and the root can for_each over regions.
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.0.0, < 7.0.0"
    }
  }
}
