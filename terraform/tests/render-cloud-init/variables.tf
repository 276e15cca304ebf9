variable "meridian_url" {
  description = "The binary URL put in the rendered user data."
  type        = string
  default     = "https://example.invalid/meridian-linux-amd64"

  validation {
    condition     = startswith(var.meridian_url, "https://")
    error_message = "meridian_url must be an https:// URL."
  }
}
