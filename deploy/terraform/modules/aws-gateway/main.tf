data "aws_subnet" "this" {
  id = var.subnet_id
}

data "aws_ami" "ubuntu" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = ["099720109477"] # Canonical

  filter {
    name   = "name"
    values = ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
}

locals {
  # AWS names and tags carry the site, so two sites' gateways in one account never clash.
  prefix     = "${var.site}-${var.name}"
  ami_id     = var.ami_id != null ? var.ami_id : data.aws_ami.ubuntu[0].id
  private_ip = var.private_ip != null ? var.private_ip : cidrhost(data.aws_subnet.this.cidr_block, 10)
  tags       = merge(var.tags, { "strait.dev/site" = var.site, "strait.dev/role" = "gateway" })

  release_url = "${trimsuffix(var.strait_release_base_url, "/")}/${var.strait_version}/strait-${var.strait_version}-${var.strait_target}.tar.gz"

  # The [vault] table: AWS IAM auth as the instance's role, no secret anywhere.
  vault_toml = var.vault == null ? "" : join("\n", compact([
    "[vault]",
    "address = ${jsonencode(var.vault.address)}",
    "mount = ${jsonencode(var.vault.pki_mount)}",
    "role = ${jsonencode(var.vault.pki_role)}",
    "auth = \"aws\"",
    "auth-mount = ${jsonencode(var.vault.auth_mount)}",
    "auth-role = ${jsonencode(var.vault.auth_role)}",
    "cert-ttl = ${jsonencode(var.vault.cert_ttl)}",
    var.vault.ca_cert == null ? "" : "ca-cert = \"/etc/ssl/strait/vault-ca.pem\"",
  ]))

  # The [bgp] table: BIRD beside the agent on the files strait-bird.service uses
  # (deploy/systemd); the router id is the gateway's VPC address.
  bgp_toml = var.bgp == null ? "" : join("\n", concat([
    "[bgp]",
    "local-as = ${var.bgp.local_as}",
    "router-id = ${jsonencode(local.private_ip)}",
    "bird-config = \"/run/strait-bird/bird.conf\"",
    "bird-socket = \"/run/strait-bird/bird.ctl\"",
    "birdc = \"/usr/sbin/birdc\"",
    "hold-time = ${jsonencode(var.bgp.hold_time)}",
    "bfd = ${var.bgp.bfd}",
    ], flatten([for n in var.bgp.neighbors : [
      "",
      "[[bgp.neighbors]]",
      "address = ${jsonencode(n.address)}",
      "remote-as = ${n.remote_as}",
  ]])))

  endpoints = concat(
    var.interconnect_address == null ? [] : [{ address = var.interconnect_address, kind = "interconnect" }],
    [
      { address = "${local.private_ip}:${var.wireguard_port}", kind = "private" },
      { address = "${aws_eip.this.public_ip}:${var.wireguard_port}", kind = "public" },
    ],
  )

  agent_toml = templatefile("${path.module}/../../templates/agent.toml.tftpl", {
    mesh           = var.mesh
    site           = var.site
    node           = var.name
    coordinators   = var.coordinators
    wireguard_port = var.wireguard_port
    mtu            = var.mtu
    metrics_listen = "${local.private_ip}:${var.metrics_port}"
    endpoints      = local.endpoints
    prefixes       = var.local_prefixes
    extra          = var.agent_config_extra
    priority       = var.gateway_priority
    vault          = local.vault_toml
    bgp            = local.bgp_toml
  })

  user_data = templatefile("${path.module}/../../templates/cloud-init.yaml.tftpl", {
    agent_toml     = local.agent_toml
    agent_secrets  = var.agent_secrets
    vault_ca_cert  = var.vault == null ? null : var.vault.ca_cert
    release_url    = local.release_url
    release_sha256 = var.strait_release_sha256
    # install.sh sees [bgp] in agent.toml and runs BIRD beside the agent (strait-bird.service).
    packages = var.bgp == null ? ["curl", "ca-certificates"] : ["curl", "ca-certificates", "bird2"]
    # The units come from the verified archive; install.sh is what verifies it.
    install_files = {
      "install.sh" = file("${path.module}/../../../systemd/install.sh")
    }
  })
}

# A stable public address: it is the gateway's `public` endpoint in the mesh.
resource "aws_eip" "this" {
  domain = "vpc"
  tags   = merge(local.tags, { Name = local.prefix })
}

# The instance's identity: Vault's AWS auth method (iam) logs it in as this role, so no
# Vault secret is in user data or in Terraform's state. It needs no AWS permission.
resource "aws_iam_role" "this" {
  name_prefix = "${local.prefix}-"
  description = "Strait gateway ${var.name} of site ${var.site}: its identity for Vault's AWS auth"
  tags        = local.tags
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Action    = "sts:AssumeRole"
      Principal = { Service = "ec2.amazonaws.com" }
    }]
  })
}

resource "aws_iam_instance_profile" "this" {
  name_prefix = "${local.prefix}-"
  role        = aws_iam_role.this.name
  tags        = local.tags
}

resource "aws_security_group" "this" {
  name_prefix = "${local.prefix}-"
  description = "Strait gateway ${var.name} (site ${var.site})"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = local.prefix })

  lifecycle {
    create_before_destroy = true
  }
}

# Keyed by the names of var.peer_public_cidrs: the addresses may be known only after apply
# (another module's Elastic IP), the names never are.
resource "aws_vpc_security_group_ingress_rule" "wireguard" {
  for_each          = var.peer_public_cidrs
  security_group_id = aws_security_group.this.id
  description       = "Strait WireGuard and path probes from other sites"
  ip_protocol       = "udp"
  from_port         = var.wireguard_port
  to_port           = var.wireguard_port
  cidr_ipv4         = each.value
}

# Hosts of the site send cross-site traffic to the gateway (route tables below), and
# members' tunnels to it arrive on the WireGuard port: admit the site's own ranges.
resource "aws_vpc_security_group_ingress_rule" "site" {
  for_each          = toset(var.local_prefixes)
  security_group_id = aws_security_group.this.id
  description       = "Traffic from the site to forward to other sites"
  ip_protocol       = "-1"
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "coordinator" {
  for_each          = toset(var.coordinator_ingress_cidrs)
  security_group_id = aws_security_group.this.id
  description       = "strait-coordinator (QUIC)"
  ip_protocol       = "udp"
  from_port         = var.coordinator_port
  to_port           = var.coordinator_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "metrics" {
  for_each          = toset(var.metrics_ingress_cidrs)
  security_group_id = aws_security_group.this.id
  description       = "Strait agent metrics"
  ip_protocol       = "tcp"
  from_port         = var.metrics_port
  to_port           = var.metrics_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each          = toset(var.ssh_ingress_cidrs)
  security_group_id = aws_security_group.this.id
  description       = "SSH"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.this.id
  description       = "Tunnels, the coordinator, Vault, the release download, forwarded traffic"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_instance" "this" {
  ami                    = local.ami_id
  instance_type          = var.instance_type
  subnet_id              = var.subnet_id
  private_ip             = local.private_ip
  vpc_security_group_ids = [aws_security_group.this.id]
  key_name               = var.key_name
  iam_instance_profile   = aws_iam_instance_profile.this.name

  # The gateway forwards packets that are neither from nor to its own addresses.
  source_dest_check = false

  # cloud-init decompresses gzip user data; compressed, the install bundle stays well
  # under EC2's 16 KiB limit.
  user_data_base64 = base64gzip(local.user_data)
  # Upgrades replace the gateway: cloud-init runs once, so a new version, archive or config
  # is installed by a new instance (same private IP, Elastic IP and routes; traffic between
  # the sites stops for the minutes it takes to boot and enroll).
  user_data_replace_on_change = true

  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    http_endpoint               = "enabled"
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = 16
    encrypted   = true
  }

  tags        = merge(local.tags, { Name = local.prefix })
  volume_tags = merge(local.tags, { Name = local.prefix })

  lifecycle {
    # A new AMI release should not replace a running gateway; roll it deliberately.
    ignore_changes = [ami]
  }
}

resource "aws_eip_association" "this" {
  allocation_id        = aws_eip.this.id
  network_interface_id = aws_instance.this.primary_network_interface_id
}

# Each given route table sends each remote site's prefix to the gateway's primary ENI.
# Keyed by the route tables' names, not their IDs, which are unknown until they exist.
resource "aws_route" "remote" {
  for_each = {
    for pair in setproduct(keys(var.route_tables), var.remote_prefixes) :
    "${pair[0]}|${pair[1]}" => { route_table_id = var.route_tables[pair[0]], prefix = pair[1] }
  }

  route_table_id         = each.value.route_table_id
  destination_cidr_block = each.value.prefix
  network_interface_id   = aws_instance.this.primary_network_interface_id
}
