# A Strait site in one AWS VPC: two (or more) gateways, each in its own subnet (spread them
# over two availability zones), all active, and the VPC Route Server that learns the other
# sites' prefixes from them over BGP (BFD) and writes them into the given route tables.
# Hosts without an agent then reach other sites through whichever gateways are healthy,
# spread by the route tables' ECMP; a gateway that fails is withdrawn within a second.

locals {
  tags = merge(var.tags, { "strait.dev/site" = var.site })

  # Two Route Server endpoints in each gateway's subnet (AWS recommends two per subnet for
  # redundancy); each gateway peers with both endpoints of its subnet. Keyed by the
  # gateways' names (static), so for_each never waits for an ID.
  endpoint_slots = ["a", "b"]
  endpoints = {
    for pair in setproduct(keys(var.gateways), local.endpoint_slots) :
    "${pair[0]}-${pair[1]}" => { gateway = pair[0], subnet_id = var.gateways[pair[0]].subnet_id }
  }
  propagations = { for name, id in var.route_tables : name => id }
}

# The gateways' subnets: failover across availability zones needs two of them.
data "aws_subnet" "gateway" {
  for_each = var.gateways
  id       = each.value.subnet_id
}

resource "aws_vpc_route_server" "this" {
  amazon_side_asn = var.route_server_asn
  # Keeping a dead gateway's routes after its sessions drop would black-hole traffic to
  # it: withdraw them at once (the other gateways' routes remain).
  persist_routes = "disable"
  tags           = merge(local.tags, { Name = "${var.site}-strait" })

  lifecycle {
    precondition {
      condition     = length(var.gateways) < 2 || length(distinct([for s in data.aws_subnet.gateway : s.availability_zone])) >= 2
      error_message = "The gateways' subnets are all in one availability zone: give them subnets in at least two, so one zone's failure leaves a gateway."
    }
  }
}

resource "aws_vpc_route_server_vpc_association" "this" {
  route_server_id = aws_vpc_route_server.this.route_server_id
  vpc_id          = var.vpc_id
}

resource "aws_vpc_route_server_endpoint" "this" {
  for_each        = local.endpoints
  route_server_id = aws_vpc_route_server.this.route_server_id
  subnet_id       = each.value.subnet_id
  tags            = merge(local.tags, { Name = "${var.site}-strait-${each.key}" })

  depends_on = [aws_vpc_route_server_vpc_association.this]
}

module "gateway" {
  source   = "../aws-gateway"
  for_each = var.gateways

  name             = each.key
  mesh             = var.mesh
  site             = var.site
  coordinators     = var.coordinators
  vpc_id           = var.vpc_id
  subnet_id        = each.value.subnet_id
  private_ip       = each.value.private_ip
  gateway_priority = each.value.priority
  local_prefixes   = var.local_prefixes
  # No static routes: the Route Server writes the remote prefixes into the route tables.
  route_tables              = {}
  peer_public_cidrs         = var.peer_public_cidrs
  coordinator_ingress_cidrs = var.coordinator_ingress_cidrs
  metrics_ingress_cidrs     = var.metrics_ingress_cidrs
  ssh_ingress_cidrs         = var.ssh_ingress_cidrs
  instance_type             = var.instance_type
  ami_id                    = var.ami_id
  key_name                  = var.key_name
  strait_version            = var.strait_version
  strait_release_base_url   = var.strait_release_base_url
  strait_target             = var.strait_target
  strait_release_sha256     = var.strait_release_sha256
  # Failover within a second needs fast probes on every node of the mesh.
  agent_config_extra = join("\n", compact(["probe-interval = ${jsonencode(var.probe_interval)}", var.agent_config_extra]))
  agent_secrets      = lookup(var.agent_secrets, each.key, {})
  vault              = var.vault
  tags               = var.tags

  bgp = {
    local_as  = var.gateway_asn
    hold_time = var.hold_time
    bfd       = true
    neighbors = [
      for slot in local.endpoint_slots : {
        address   = aws_vpc_route_server_endpoint.this["${each.key}-${slot}"].eni_address
        remote_as = var.route_server_asn
      }
    ]
  }
}

# Each gateway is a BGP peer of both endpoints in its subnet, with BFD.
resource "aws_vpc_route_server_peer" "this" {
  for_each                 = local.endpoints
  route_server_endpoint_id = aws_vpc_route_server_endpoint.this[each.key].route_server_endpoint_id
  peer_address             = module.gateway[each.value.gateway].private_ip
  tags                     = merge(local.tags, { Name = "${var.site}-strait-${each.key}" })

  bgp_options {
    peer_asn                = var.gateway_asn
    peer_liveness_detection = "bfd"
  }
}

# The route tables of the site's hosts get the routes the Route Server learned (the other
# sites' prefixes, next hop: the gateways that announce them).
resource "aws_vpc_route_server_propagation" "this" {
  for_each        = local.propagations
  route_server_id = aws_vpc_route_server.this.route_server_id
  route_table_id  = each.value

  depends_on = [aws_vpc_route_server_vpc_association.this]
}
