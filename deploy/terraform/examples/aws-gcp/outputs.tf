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
