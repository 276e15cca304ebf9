output "client_endpoints" {
  description = "Per region: the QUIC endpoint, the HTTPS URL, the server name and every node's client address."
  value       = module.meridian.client_endpoints
}

output "certificate_identities" {
  description = "What scripts/issue-certs.sh issues each node's certificate for."
  value       = module.meridian.certificate_identities
}

output "credentials" {
  description = "Where the CA certificate and the admin's client certificate are."
  value       = module.meridian.credentials
}

output "sdk" {
  description = "Per region, the Rust SDK call that connects to it."
  value       = module.meridian.sdk
}
