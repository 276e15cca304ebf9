terraform {
  # terraform_data is built in (terraform.io/builtin/terraform): nothing to download.
  required_version = ">= 1.9.0"
}
