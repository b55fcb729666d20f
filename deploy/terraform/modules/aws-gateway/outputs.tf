output "instance_id" {
  description = "EC2 instance ID of the gateway."
  value       = aws_instance.this.id
}

output "public_ip" {
  description = "The gateway's Elastic IP: its `public` endpoint, and what other sites admit to their WireGuard port."
  value       = aws_eip.this.public_ip
}

output "private_ip" {
  description = "The gateway's private IP: its `private` endpoint."
  value       = local.private_ip
}

output "network_interface_id" {
  description = "Primary ENI: the next hop of the remote-prefix routes."
  value       = aws_instance.this.primary_network_interface_id
}

output "security_group_id" {
  description = "The gateway's security group. Workloads' own security groups must admit the remote sites' prefixes."
  value       = aws_security_group.this.id
}

output "endpoints" {
  description = "Endpoints the agent announces (address:port and kind)."
  value       = local.endpoints
}

output "agent_config" {
  description = "The rendered /etc/strait/agent.toml (no secrets: those are in agent_secrets)."
  value       = local.agent_toml
}

output "iam_role_arn" {
  description = "The gateway's IAM role: bind Vault's AWS auth role to it (bound_iam_principal_arn)."
  value       = aws_iam_role.this.arn
}

output "release_url" {
  description = "The release archive the gateway installs."
  value       = local.release_url
}
