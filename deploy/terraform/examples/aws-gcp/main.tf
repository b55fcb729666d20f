# The seed's layout: a primary site in AWS us-east-1 and a second one in GCP us-central1,
# joined by two Strait gateways in each, in two zones, all active (over the internet here;
# add interconnect_address for a Direct Connect + Cloud Interconnect or Megaport path).
# AWS learns the GCP prefix from its gateways over BGP (VPC Route Server); GCP routes the
# AWS prefix to its two gateways with static routes.

locals {
  aws_site = "aws-use1"
  gcp_site = "gcp-usc1"

  # Certificates from Vault (cloud IAM auth, no secret) when vault_address is set; from the
  # coordinator's built-in CA with single-use join tokens otherwise.
  join_token_file = "join-token-file = \"/run/credentials/strait-agent.service/secret_join-token\""

  # Two gateways per site, in two zones (name => index of the availability zone / zone letter).
  aws_gateway_zones = { gw-1 = 0, gw-2 = 1 }
  gcp_gateway_zones = { gw-1 = "a", gw-2 = "b" }
}

# --- AWS: VPC, a public subnet for the gateway, a private one for workloads -------------

data "aws_availability_zones" "available" {
  state = "available"
}

resource "aws_vpc" "main" {
  cidr_block           = var.aws_vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = { Name = "strait-${local.aws_site}" }
}

resource "aws_internet_gateway" "main" {
  vpc_id = aws_vpc.main.id
  tags   = { Name = "strait-${local.aws_site}" }
}

# The gateways' subnets, one per availability zone, so a zone's failure leaves a gateway.
resource "aws_subnet" "public" {
  for_each          = local.aws_gateway_zones
  vpc_id            = aws_vpc.main.id
  cidr_block        = cidrsubnet(var.aws_vpc_cidr, 8, each.value)
  availability_zone = data.aws_availability_zones.available.names[each.value]
  tags              = { Name = "strait-${local.aws_site}-public-${each.key}" }
}

resource "aws_subnet" "private" {
  vpc_id            = aws_vpc.main.id
  cidr_block        = cidrsubnet(var.aws_vpc_cidr, 8, 10)
  availability_zone = data.aws_availability_zones.available.names[0]
  tags              = { Name = "strait-${local.aws_site}-private" }
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.main.id
  tags   = { Name = "strait-${local.aws_site}-public" }
}

resource "aws_route" "public_internet" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.main.id
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.main.id
  tags   = { Name = "strait-${local.aws_site}-private" }
}

resource "aws_route_table_association" "public" {
  for_each       = aws_subnet.public
  subnet_id      = each.value.id
  route_table_id = aws_route_table.public.id
}

resource "aws_route_table_association" "private" {
  subnet_id      = aws_subnet.private.id
  route_table_id = aws_route_table.private.id
}

# Two active gateways in two zones and the VPC Route Server: each gateway announces the GCP
# site's prefix over BGP (BFD) to the two Route Server endpoints of its subnet, and the
# Route Server writes it into both route tables with the healthy gateways as next hops.
module "aws_site" {
  source = "../../modules/aws-site"

  mesh         = var.mesh
  site         = local.aws_site
  coordinators = var.coordinators
  vpc_id       = aws_vpc.main.id
  # Keys are literal names (known at plan time); the subnets' IDs are known after apply.
  gateways = {
    for name, zone in local.aws_gateway_zones : name => { subnet_id = aws_subnet.public[name].id }
  }
  local_prefixes = [var.aws_vpc_cidr]
  route_tables   = { public = aws_route_table.public.id, private = aws_route_table.private.id }

  # Only the GCP gateways connect to these (their addresses are known after apply).
  peer_public_cidrs = { for name, g in module.gcp_gateway : "${local.gcp_site}-${name}" => "${g.public_ip}/32" }

  strait_version          = var.strait_version
  strait_release_base_url = var.strait_release_base_url
  strait_release_sha256   = var.strait_release_sha256

  # Vault's AWS auth method logs each instance in as its IAM role (output
  # aws_gateway_iam_role_arns): no secret in user data or state.
  vault = var.vault_address == null ? null : {
    address   = var.vault_address
    pki_role  = "strait-gateway-${local.aws_site}"
    auth_role = "strait-gateway-${local.aws_site}"
    ca_cert   = var.vault_ca_cert
  }
  agent_config_extra = var.vault_address == null ? local.join_token_file : ""
  agent_secrets = var.vault_address == null ? {
    for name, zone in local.aws_gateway_zones : name => { "join-token" = var.join_tokens["${local.aws_site}/${name}"] }
  } : {}
}

# --- GCP: a custom-mode network and one subnetwork --------------------------------------

resource "google_compute_network" "main" {
  name                    = "strait-${local.gcp_site}"
  auto_create_subnetworks = false
  routing_mode            = "REGIONAL"
}

resource "google_compute_subnetwork" "main" {
  name          = "strait-${local.gcp_site}"
  network       = google_compute_network.main.id
  region        = var.gcp_region
  ip_cidr_range = cidrsubnet(var.gcp_vpc_cidr, 4, 0)
}

# Two gateways in two zones. The network routes the AWS prefix to both with equal priority
# (static routes: GCP spreads flows over them, but does not withdraw a dead one; for that,
# peer them with a Cloud Router through an NCC router-appliance spoke: README, "Several
# gateways per site and BGP", and deploy/README.md).
module "gcp_gateway" {
  source   = "../../modules/gcp-gateway"
  for_each = local.gcp_gateway_zones

  name         = each.key
  mesh         = var.mesh
  site         = local.gcp_site
  coordinators = var.coordinators

  zone            = "${var.gcp_region}-${each.value}"
  network         = google_compute_network.main.self_link
  subnetwork      = google_compute_subnetwork.main.self_link
  local_prefixes  = [var.gcp_vpc_cidr]
  remote_prefixes = [var.aws_vpc_cidr]

  peer_public_cidrs = { for name, ip in module.aws_site.public_ips : "${local.aws_site}-${name}" => "${ip}/32" }

  strait_version          = var.strait_version
  strait_release_base_url = var.strait_release_base_url
  strait_release_sha256   = var.strait_release_sha256

  # Vault's GCP auth method (gce) logs the instance in as its service account (output
  # gcp_gateway_service_account): no secret in metadata or state.
  vault = var.vault_address == null ? null : {
    address   = var.vault_address
    pki_role  = "strait-gateway-${local.gcp_site}"
    auth_role = "strait-gateway-${local.gcp_site}"
    ca_cert   = var.vault_ca_cert
  }
  agent_config_extra = var.vault_address == null ? local.join_token_file : ""
  agent_secrets      = var.vault_address == null ? { "join-token" = var.join_tokens["${local.gcp_site}/${each.key}"] } : {}
}
