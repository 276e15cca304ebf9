terraform {
  # Only the built-in terraform_data resource: applies offline, nothing to download.
  required_version = ">= 1.9.0"
}
