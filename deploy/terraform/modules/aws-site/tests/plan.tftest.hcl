# terraform test (from this directory, or deploy/check.sh): plans and applies the module
# with a mocked AWS provider (no credentials, no network). The mock gives every subnet a
# random availability zone unless a run overrides it.

mock_provider "aws" {
  mock_data "aws_subnet" {
    defaults = { cidr_block = "10.10.0.0/16" }
  }
  mock_data "aws_ami" {
    defaults = { id = "ami-0123456789abcdef0" }
  }
  mock_resource "aws_vpc_route_server" {
    defaults = { route_server_id = "rs-0123456789abcdef0" }
  }
  mock_resource "aws_vpc_route_server_endpoint" {
    defaults = { eni_address = "10.10.1.4", route_server_endpoint_id = "rse-0123456789abcdef0" }
  }
}

variables {
  mesh         = "prod"
  site         = "aws-use1"
  coordinators = ["strait-coordinator.example.net:7443"]
  vpc_id       = "vpc-0123456789abcdef0"
  gateways = {
    gw-1 = { subnet_id = "subnet-0aaaaaaaaaaaaaaaa", private_ip = "10.10.1.10" }
    gw-2 = { subnet_id = "subnet-0bbbbbbbbbbbbbbbb", private_ip = "10.10.2.10" }
  }
  local_prefixes          = ["10.10.0.0/16"]
  route_tables            = { private-a = "rtb-0a", private-b = "rtb-0b" }
  strait_version          = "0.1.0"
  strait_release_base_url = "https://releases.example.net/strait"
  strait_release_sha256   = "0000000000000000000000000000000000000000000000000000000000000000"
  vault = {
    address   = "https://vault.example.net:8200"
    pki_role  = "strait-gateway-aws-use1"
    auth_role = "strait-gateway-aws-use1"
  }
}

run "two_gateways_peering_with_the_route_server" {
  command = apply

  assert {
    condition     = length(output.gateways) == 2 && toset(keys(output.gateways)) == toset(["gw-1", "gw-2"])
    error_message = "two gateways, gw-1 and gw-2: ${jsonencode(keys(output.gateways))}"
  }
  assert {
    condition     = length(aws_vpc_route_server_endpoint.this) == 4 && toset([for e in aws_vpc_route_server_endpoint.this : e.subnet_id]) == toset(["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"])
    error_message = "two Route Server endpoints in each gateway's subnet"
  }
  assert {
    condition     = length(aws_vpc_route_server_peer.this) == 4 && toset([for p in aws_vpc_route_server_peer.this : p.peer_address]) == toset(["10.10.1.10", "10.10.2.10"])
    error_message = "each gateway is a peer of the two endpoints of its subnet"
  }
  assert {
    condition     = alltrue([for k, p in aws_vpc_route_server_peer.this : p.bgp_options[0].peer_liveness_detection == "bfd" && p.bgp_options[0].peer_asn == 65001 && p.route_server_endpoint_id == aws_vpc_route_server_endpoint.this[k].route_server_endpoint_id])
    error_message = "peers: BFD, the gateways' ASN, on their own endpoint"
  }
  assert {
    condition     = aws_vpc_route_server_peer.this["gw-2-a"].peer_address == "10.10.2.10" && aws_vpc_route_server_endpoint.this["gw-2-a"].subnet_id == "subnet-0bbbbbbbbbbbbbbbb"
    error_message = "gw-2 peers from its own subnet"
  }
  assert {
    condition     = aws_vpc_route_server.this.amazon_side_asn == 65000 && aws_vpc_route_server.this.persist_routes == "disable" && aws_vpc_route_server_vpc_association.this.vpc_id == "vpc-0123456789abcdef0"
    error_message = "the Route Server (ASN 65000, no persisted routes) is associated with the VPC"
  }
  assert {
    condition     = toset([for p in aws_vpc_route_server_propagation.this : p.route_table_id]) == toset(["rtb-0a", "rtb-0b"])
    error_message = "the Route Server propagates into both route tables"
  }
  assert {
    condition = alltrue([for name, g in output.gateways :
      strcontains(g.agent_config, "\n[bgp]\nlocal-as = 65001\nrouter-id = \"${g.private_ip}\"\nbird-config = \"/run/strait-bird/bird.conf\"\nbird-socket = \"/run/strait-bird/bird.ctl\"\nbirdc = \"/usr/sbin/birdc\"")
      && length(regexall("\\[\\[bgp.neighbors\\]\\]\naddress = \"10.10.1.4\"\nremote-as = 65000", g.agent_config)) == 2
      && strcontains(g.agent_config, "bfd = true")
      && strcontains(g.agent_config, "probe-interval = \"200ms\"")
      && strcontains(g.agent_config, "gateway-priority = \"active\"")
    ])
    error_message = "each gateway's agent.toml has [bgp] with the two endpoints of its subnet as neighbours: ${output.gateways["gw-1"].agent_config}"
  }
  assert {
    condition     = strcontains(output.gateways["gw-1"].agent_config, "[vault]") && strcontains(output.gateways["gw-1"].agent_config, "auth = \"aws\"")
    error_message = "Vault's AWS auth as before"
  }
}

run "a_standby_gateway" {
  command = apply

  variables {
    gateways = {
      gw-1 = { subnet_id = "subnet-0aaaaaaaaaaaaaaaa", private_ip = "10.10.1.10" }
      gw-2 = { subnet_id = "subnet-0bbbbbbbbbbbbbbbb", private_ip = "10.10.2.10", priority = "standby" }
    }
  }
  assert {
    condition     = strcontains(output.gateways["gw-2"].agent_config, "gateway-priority = \"standby\"") && strcontains(output.gateways["gw-1"].agent_config, "gateway-priority = \"active\"")
    error_message = "priority per gateway"
  }
}

run "gateways_in_one_zone_are_refused" {
  command = plan

  override_data {
    target = data.aws_subnet.gateway
    values = { availability_zone = "us-east-1a", cidr_block = "10.10.0.0/16" }
  }
  expect_failures = [aws_vpc_route_server.this]
}

run "keys_known_at_plan_time_with_subnets_made_in_the_same_plan" {
  command = plan

  # Subnets, route tables and the VPC made in the same configuration: IDs unknown at plan
  # time, gateway names and route table names known ("Invalid for_each argument" otherwise).
  module {
    source = "./tests/new-vpc"
  }
}
