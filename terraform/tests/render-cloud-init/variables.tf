variable "meridian_url" {
  description = "The binary URL put in the rendered user data."
  type        = string
  default     = "https://example.invalid/meridian-linux-amd64"
}
