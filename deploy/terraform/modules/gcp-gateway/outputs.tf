output "instance_id" {
  description = "Instance ID of the gateway."
  value       = google_compute_instance.this.instance_id
}

output "self_link" {
  description = "Self link of the gateway instance: the next hop of the remote-prefix routes."
  value       = google_compute_instance.this.self_link
}

output "public_ip" {
  description = "The gateway's static external IP: its `public` endpoint, and what other sites admit to their WireGuard port."
  value       = google_compute_address.public.address
}

output "private_ip" {
  description = "The gateway's internal IP: its `private` endpoint."
  value       = local.network_ip
}

output "network_tag" {
  description = "Network tag on the gateway (the target of its firewall rules)."
  value       = local.tag
}

output "endpoints" {
  description = "Endpoints the agent announces (address:port and kind)."
  value       = local.endpoints
}

output "agent_config" {
  description = "The rendered /etc/strait/agent.toml (no secrets: those are in agent_secrets)."
  value       = local.agent_toml
}

output "service_account_email" {
  description = "The gateway's service account: bind Vault's GCP auth role to it (bound_service_accounts)."
  value       = google_service_account.this.email
}

output "release_url" {
  description = "The release archive the gateway installs."
  value       = local.release_url
}
