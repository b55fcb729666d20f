# A fixture for plan.tftest.hcl: two aws-gateway modules in two VPCs made in the same
# configuration, each admitting the other's Elastic IP and routing into new route tables,
# so every for_each key must be known before apply.
terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

locals {
  sites = { a = "10.10.0.0/16", b = "10.20.0.0/16" }
}

resource "aws_vpc" "site" {
  for_each   = local.sites
  cidr_block = each.value
}

resource "aws_subnet" "site" {
  for_each   = local.sites
  vpc_id     = aws_vpc.site[each.key].id
  cidr_block = cidrsubnet(each.value, 8, 0)
}

resource "aws_route_table" "site" {
  for_each = local.sites
  vpc_id   = aws_vpc.site[each.key].id
}

module "a" {
  source = "../.."

  name                    = "gw-1"
  mesh                    = "prod"
  site                    = "site-a"
  coordinators            = ["strait-coordinator.example.net:7443"]
  vpc_id                  = aws_vpc.site["a"].id
  subnet_id               = aws_subnet.site["a"].id
  private_ip              = "10.10.0.10"
  local_prefixes          = [local.sites.a]
  remote_prefixes         = [local.sites.b]
  route_tables            = { main = aws_route_table.site["a"].id }
  peer_public_cidrs       = { site-b = "${module.b.public_ip}/32" }
  strait_version          = "0.1.0"
  strait_release_base_url = "https://releases.example.net/strait"
  strait_release_sha256   = "0000000000000000000000000000000000000000000000000000000000000000"
  agent_config_extra      = "join-token-file = \"/run/credentials/strait-agent.service/secret_join-token\""
  agent_secrets           = { "join-token" = "single-use" }
}

module "b" {
  source = "../.."

  name                    = "gw-1"
  mesh                    = "prod"
  site                    = "site-b"
  coordinators            = ["strait-coordinator.example.net:7443"]
  vpc_id                  = aws_vpc.site["b"].id
  subnet_id               = aws_subnet.site["b"].id
  private_ip              = "10.20.0.10"
  local_prefixes          = [local.sites.b]
  remote_prefixes         = [local.sites.a]
  route_tables            = { main = aws_route_table.site["b"].id }
  peer_public_cidrs       = { site-a = "${module.a.public_ip}/32" }
  strait_version          = "0.1.0"
  strait_release_base_url = "https://releases.example.net/strait"
  strait_release_sha256   = "0000000000000000000000000000000000000000000000000000000000000000"
  vault = {
    address   = "https://vault.example.net:8200"
    pki_role  = "strait-gateway-site-b"
    auth_role = "strait-gateway-site-b"
  }
}
