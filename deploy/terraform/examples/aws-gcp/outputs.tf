output "aws_gateway_public_ips" {
  description = "Public endpoints of the AWS gateways, by name."
  value       = module.aws_site.public_ips
}

output "gcp_gateway_public_ips" {
  description = "Public endpoints of the GCP gateways, by name."
  value       = { for name, g in module.gcp_gateway : name => g.public_ip }
}

output "aws_route_server_endpoints" {
  description = "The VPC Route Server's endpoints (the AWS gateways' BGP neighbours)."
  value       = module.aws_site.route_server_endpoints
}

output "coordinator_sites" {
  description = "The [[sites]] entries the coordinator's config needs for this layout."
  value       = <<-EOT
    [[sites]]
    name = "aws-use1"
    cloud = "aws"
    region = "${var.aws_region}"
    prefixes = ["${var.aws_vpc_cidr}"]

    [[sites]]
    name = "gcp-usc1"
    cloud = "gcp"
    region = "${var.gcp_region}"
    prefixes = ["${var.gcp_vpc_cidr}"]
  EOT
}

output "aws_gateway_iam_role_arns" {
  description = "Bind Vault's AWS auth role strait-gateway-aws-use1 to them (bound_iam_principal_arn)."
  value       = [for g in module.aws_site.gateways : g.iam_role_arn]
}

output "gcp_gateway_service_accounts" {
  description = "Bind Vault's GCP auth role strait-gateway-gcp-usc1 to them (bound_service_accounts)."
  value       = [for g in module.gcp_gateway : g.service_account_email]
}
