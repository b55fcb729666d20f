data "google_compute_subnetwork" "this" {
  self_link = var.subnetwork
}

locals {
  # GCE names carry the site, so two sites' gateways in one project never clash.
  prefix     = "${var.site}-${var.name}"
  region     = join("-", slice(split("-", var.zone), 0, 2))
  network_ip = var.network_ip != null ? var.network_ip : cidrhost(data.google_compute_subnetwork.this.ip_cidr_range, 10)
  tag        = "${local.prefix}-strait-gateway"
  labels     = merge(var.labels, { "strait-site" = var.site, "strait-role" = "gateway" })

  release_url = "${trimsuffix(var.strait_release_base_url, "/")}/${var.strait_version}/strait-${var.strait_version}-${var.strait_target}.tar.gz"

  # The [vault] table: GCP IAM auth (gce) as the instance's service account, no secret.
  vault_toml = var.vault == null ? "" : join("\n", compact([
    "[vault]",
    "address = ${jsonencode(var.vault.address)}",
    "mount = ${jsonencode(var.vault.pki_mount)}",
    "role = ${jsonencode(var.vault.pki_role)}",
    "auth = \"gcp\"",
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
    "router-id = ${jsonencode(local.network_ip)}",
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
      { address = "${local.network_ip}:${var.wireguard_port}", kind = "private" },
      { address = "${google_compute_address.public.address}:${var.wireguard_port}", kind = "public" },
    ],
  )

  agent_toml = templatefile("${path.module}/../../templates/agent.toml.tftpl", {
    mesh           = var.mesh
    site           = var.site
    node           = var.name
    coordinators   = var.coordinators
    wireguard_port = var.wireguard_port
    mtu            = var.mtu
    metrics_listen = "${local.network_ip}:${var.metrics_port}"
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
resource "google_compute_address" "public" {
  project      = var.project
  name         = "${local.prefix}-public"
  region       = local.region
  address_type = "EXTERNAL"
  network_tier = "PREMIUM"
  labels       = local.labels
}

# The instance's identity: Vault's GCP auth method (gce) logs it in with the identity token
# the metadata server signs for this account, so no Vault secret is in metadata or state.
# It needs no IAM role.
resource "google_service_account" "this" {
  project      = var.project
  account_id   = substr("${local.prefix}-strait", 0, 30)
  display_name = "Strait gateway ${var.name} (site ${var.site})"
}

# What the gateway boots: a change of version, archive or config replaces the instance.
resource "terraform_data" "release" {
  input = sha256(local.user_data)
}

resource "google_compute_instance" "this" {
  project      = var.project
  name         = local.prefix
  zone         = var.zone
  machine_type = var.machine_type
  tags         = [local.tag]
  labels       = local.labels

  # The gateway forwards packets that are neither from nor to its own addresses.
  can_ip_forward = true

  boot_disk {
    initialize_params {
      image = var.image
      size  = 20
      type  = "pd-balanced"
    }
  }

  network_interface {
    subnetwork = var.subnetwork
    network_ip = local.network_ip

    access_config {
      nat_ip       = google_compute_address.public.address
      network_tier = "PREMIUM"
    }
  }

  metadata = {
    user-data              = local.user_data
    block-project-ssh-keys = "true"
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  # No OAuth scope: the agent calls no Google API; the account only signs identity tokens.
  service_account {
    email  = google_service_account.this.email
    scopes = []
  }

  lifecycle {
    # A new image release should not replace a running gateway; roll it deliberately.
    ignore_changes = [boot_disk[0].initialize_params[0].image]
    # Upgrades replace the gateway: cloud-init runs once, so a new version, archive or
    # config is installed by a new instance (same address and routes; traffic between
    # the sites stops while it boots and enrolls).
    replace_triggered_by = [terraform_data.release]
  }
}

resource "google_compute_firewall" "wireguard" {
  project       = var.project
  name          = "${local.prefix}-wireguard"
  network       = var.network
  description   = "Strait WireGuard and path probes from other sites to gateway ${var.name}"
  direction     = "INGRESS"
  source_ranges = values(var.peer_public_cidrs)
  target_tags   = [local.tag]

  allow {
    protocol = "udp"
    ports    = [tostring(var.wireguard_port)]
  }
}

# Hosts of the site send cross-site traffic to the gateway (routes below), and members'
# tunnels to it arrive on the WireGuard port: admit the site's own ranges.
resource "google_compute_firewall" "site" {
  project       = var.project
  name          = "${local.prefix}-from-site"
  network       = var.network
  description   = "Traffic from site ${var.site} for Strait gateway ${var.name} to forward"
  direction     = "INGRESS"
  source_ranges = var.local_prefixes
  target_tags   = [local.tag]

  allow {
    protocol = "all"
  }
}

# The gateway delivers remote sites' traffic with its original source addresses.
resource "google_compute_firewall" "remote" {
  count         = length(var.remote_prefixes) > 0 ? 1 : 0
  project       = var.project
  name          = "${local.prefix}-from-remote-sites"
  network       = var.network
  description   = "Traffic from other Strait sites, through gateway ${var.name}"
  direction     = "INGRESS"
  source_ranges = var.remote_prefixes
  target_tags   = length(var.workload_target_tags) > 0 ? var.workload_target_tags : null

  allow {
    protocol = "all"
  }
}

resource "google_compute_firewall" "metrics" {
  count         = length(var.metrics_source_ranges) > 0 ? 1 : 0
  project       = var.project
  name          = "${local.prefix}-metrics"
  network       = var.network
  description   = "Strait agent metrics on gateway ${var.name}"
  direction     = "INGRESS"
  source_ranges = var.metrics_source_ranges
  target_tags   = [local.tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.metrics_port)]
  }
}

# One route per remote prefix, with the gateway instance as next hop.
resource "google_compute_route" "remote" {
  for_each = toset(var.remote_prefixes)

  project                = var.project
  name                   = "${local.prefix}-${replace(replace(each.value, ".", "-"), "/", "--")}"
  network                = var.network
  description            = "Strait: ${each.value} through gateway ${var.name}"
  dest_range             = each.value
  next_hop_instance      = google_compute_instance.this.self_link
  next_hop_instance_zone = var.zone
  priority               = var.route_priority
  tags                   = length(var.route_tags) > 0 ? var.route_tags : null
}
