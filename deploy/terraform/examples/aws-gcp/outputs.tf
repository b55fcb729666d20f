output "aws_gateway_public_ip" {
  description = "Public endpoint of the AWS gateway."
  value       = module.aws_gateway.public_ip
}

output "gcp_gateway_public_ip" {
  description = "Public endpoint of the GCP gateway."
  value       = module.gcp_gateway.public_ip
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

output "aws_gateway_iam_role_arn" {
  description = "Bind Vault's AWS auth role strait-gateway-aws-use1 to it (bound_iam_principal_arn)."
  value       = module.aws_gateway.iam_role_arn
}

output "gcp_gateway_service_account" {
  description = "Bind Vault's GCP auth role strait-gateway-gcp-usc1 to it (bound_service_accounts)."
  value       = module.gcp_gateway.service_account_email
}
