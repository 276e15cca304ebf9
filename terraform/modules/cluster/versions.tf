terraform {
  # 1.9: variable validation may refer to other variables (a rule's regions are checked against
  # var.regions). No provider: this module only computes, so it can be planned and tested offline.
  required_version = ">= 1.9.0"
}
