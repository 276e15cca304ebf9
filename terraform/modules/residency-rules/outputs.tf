output "applied_rules_sha256" {
  description = "SHA-256 of the rules document last applied (changes when the rules do)."
  value       = terraform_data.rules.triggers_replace
}
