# The seed's layout: a primary site in AWS us-east-1 and a second one in GCP us-central1,
# joined by a Strait gateway in each (over the internet here; add interconnect_address on
# both for a Direct Connect + Cloud Interconnect or Megaport path). Each VPC routes the
# other's prefix to its gateway.

locals {
  aws_site = "aws-use1"
  gcp_site = "gcp-usc1"

  # Certificates from Vault (cloud IAM auth, no secret) when vault_address is set; from the
  # coordinator's built-in CA with single-use join tokens otherwise.
  join_token_file = "join-token-file = \"/run/credentials/strait-agent.service/secret_join-token\""
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

resource "aws_subnet" "public" {
  vpc_id            = aws_vpc.main.id
  cidr_block        = cidrsubnet(var.aws_vpc_cidr, 8, 0)
  availability_zone = data.aws_availability_zones.available.names[0]
  tags              = { Name = "strait-${local.aws_site}-public" }
}

resource "aws_subnet" "private" {
  vpc_id            = aws_vpc.main.id
  cidr_block        = cidrsubnet(var.aws_vpc_cidr, 8, 1)
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
  subnet_id      = aws_subnet.public.id
  route_table_id = aws_route_table.public.id
}

resource "aws_route_table_association" "private" {
  subnet_id      = aws_subnet.private.id
  route_table_id = aws_route_table.private.id
}

module "aws_gateway" {
  source = "../../modules/aws-gateway"

  name         = "gw-1"
  mesh         = var.mesh
  site         = local.aws_site
  coordinators = var.coordinators

  vpc_id          = aws_vpc.main.id
  subnet_id       = aws_subnet.public.id
  local_prefixes  = [var.aws_vpc_cidr]
  remote_prefixes = [var.gcp_vpc_cidr]
  # Named: the IDs are known only after apply, the names now.
  route_tables = { public = aws_route_table.public.id, private = aws_route_table.private.id }

  # Only the GCP gateway connects to this one (its address is known after apply).
  peer_public_cidrs = { (local.gcp_site) = "${module.gcp_gateway.public_ip}/32" }

  strait_version          = var.strait_version
  strait_release_base_url = var.strait_release_base_url
  strait_release_sha256   = var.strait_release_sha256

  # Vault's AWS auth method logs the instance in as its IAM role (output
  # aws_gateway_iam_role_arn): no secret in user data or state.
  vault = var.vault_address == null ? null : {
    address   = var.vault_address
    pki_role  = "strait-gateway-${local.aws_site}"
    auth_role = "strait-gateway-${local.aws_site}"
    ca_cert   = var.vault_ca_cert
  }
  agent_config_extra = var.vault_address == null ? local.join_token_file : ""
  agent_secrets      = var.vault_address == null ? { "join-token" = var.join_tokens[local.aws_site] } : {}
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

module "gcp_gateway" {
  source = "../../modules/gcp-gateway"

  name         = "gw-1"
  mesh         = var.mesh
  site         = local.gcp_site
  coordinators = var.coordinators

  zone            = "${var.gcp_region}-a"
  network         = google_compute_network.main.self_link
  subnetwork      = google_compute_subnetwork.main.self_link
  local_prefixes  = [var.gcp_vpc_cidr]
  remote_prefixes = [var.aws_vpc_cidr]

  peer_public_cidrs = { (local.aws_site) = "${module.aws_gateway.public_ip}/32" }

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
  agent_secrets      = var.vault_address == null ? { "join-token" = var.join_tokens[local.gcp_site] } : {}
}
