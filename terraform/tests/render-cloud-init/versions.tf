terraform {
  # Provider-free: renders modules/aws-region's cloud-init with templatefile() (a core function), so
  # the user data an instance would boot with can be checked offline.
  required_version = ">= 1.9.0"
}
