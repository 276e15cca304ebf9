output "applied_rules_sha256" {
  description = "SHA-256 of the rules document last applied (changes when the rules do)."
  value       = terraform_data.rules.triggers_replace
}

output "applied_users_sha256" {
  description = "SHA-256 of the users document last applied (null when users are not managed here)."
  value       = try(terraform_data.users[0].triggers_replace, null)
}
