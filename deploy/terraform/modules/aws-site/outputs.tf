output "gateways" {
  description = "Per gateway (by name): instance_id, public_ip, private_ip, security_group_id, iam_role_arn and the rendered agent_config."
  value = {
    for name, g in module.gateway : name => {
      instance_id       = g.instance_id
      public_ip         = g.public_ip
      private_ip        = g.private_ip
      security_group_id = g.security_group_id
      iam_role_arn      = g.iam_role_arn
      agent_config      = g.agent_config
    }
  }
}

output "public_ips" {
  description = "The gateways' Elastic IPs by name: what other sites admit to their WireGuard port (peer_public_cidrs)."
  value       = { for name, g in module.gateway : name => g.public_ip }
}

output "route_server_id" {
  description = "The VPC Route Server."
  value       = aws_vpc_route_server.this.route_server_id
}

output "route_server_endpoints" {
  description = "Route Server endpoint addresses by key <gateway>-<a|b>: the gateways' BGP neighbours."
  value       = { for k, e in aws_vpc_route_server_endpoint.this : k => e.eni_address }
}
