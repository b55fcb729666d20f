# A fixture for plan.tftest.hcl: a VPC with a subnet in each of two availability zones and
# a private route table, all made in this plan, and the site's two gateways in them.
terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}

locals {
  zones = { a = "us-east-1a", b = "us-east-1b" }
}

resource "aws_vpc" "site" {
  cidr_block = "10.10.0.0/16"
}

resource "aws_subnet" "gateway" {
  for_each          = local.zones
  vpc_id            = aws_vpc.site.id
  availability_zone = each.value
  cidr_block        = cidrsubnet("10.10.0.0/16", 8, index(keys(local.zones), each.key) + 1)
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.site.id
}

module "site" {
  source = "../.."

  mesh         = "prod"
  site         = "aws-use1"
  coordinators = ["strait-coordinator.example.net:7443"]
  vpc_id       = aws_vpc.site.id
  gateways = {
    gw-1 = { subnet_id = aws_subnet.gateway["a"].id }
    gw-2 = { subnet_id = aws_subnet.gateway["b"].id }
  }
  local_prefixes          = ["10.10.0.0/16"]
  route_tables            = { private = aws_route_table.private.id }
  peer_public_cidrs       = { gcp-usc1 = "203.0.113.7/32" }
  strait_version          = "0.1.0"
  strait_release_base_url = "https://releases.example.net/strait"
  strait_release_sha256   = "0000000000000000000000000000000000000000000000000000000000000000"
  agent_config_extra      = "join-token-file = \"/run/credentials/strait-agent.service/secret_join-token\""
  agent_secrets           = { gw-1 = { join-token = "single-use-1" }, gw-2 = { join-token = "single-use-2" } }
}
