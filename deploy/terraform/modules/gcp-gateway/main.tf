data "google_compute_subnetwork" "this" {
  self_link = var.subnetwork
}

locals {
  region     = join("-", slice(split("-", var.zone), 0, 2))
  network_ip = var.network_ip != null ? var.network_ip : cidrhost(data.google_compute_subnetwork.this.ip_cidr_range, 10)
  tag        = "${var.name}-strait-gateway"
  labels     = merge(var.labels, { "strait-site" = var.site, "strait-role" = "gateway" })

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
    metrics_port   = var.metrics_port
    endpoints      = local.endpoints
    prefixes       = var.local_prefixes
    extra          = var.agent_config_extra
  })

  user_data = templatefile("${path.module}/../../templates/cloud-init.yaml.tftpl", {
    agent_toml     = local.agent_toml
    agent_secrets  = var.agent_secrets
    release_url    = var.strait_release_url
    release_sha256 = var.strait_release_sha256
    install_files = {
      "install.sh"                 = file("${path.module}/../../../systemd/install.sh")
      "strait-agent.service"       = file("${path.module}/../../../systemd/strait-agent.service")
      "strait-coordinator.service" = file("${path.module}/../../../systemd/strait-coordinator.service")
      "90-strait-gateway.conf"     = file("${path.module}/../../../systemd/90-strait-gateway.conf")
    }
  })
}

# A stable public address: it is the gateway's `public` endpoint in the mesh.
resource "google_compute_address" "public" {
  project      = var.project
  name         = "${var.name}-public"
  region       = local.region
  address_type = "EXTERNAL"
  network_tier = "PREMIUM"
  labels       = local.labels
}

resource "google_compute_instance" "this" {
  project      = var.project
  name         = var.name
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

  # No service account: the agent needs no Google API (the metadata server still answers).

  lifecycle {
    # A new image release should not replace a running gateway; roll it deliberately.
    ignore_changes = [boot_disk[0].initialize_params[0].image]
  }
}

resource "google_compute_firewall" "wireguard" {
  project       = var.project
  name          = "${var.name}-wireguard"
  network       = var.network
  description   = "Strait WireGuard and path probes from other sites to gateway ${var.name}"
  direction     = "INGRESS"
  source_ranges = var.peer_public_cidrs
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
  name          = "${var.name}-from-site"
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
  name          = "${var.name}-from-remote-sites"
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
  name          = "${var.name}-metrics"
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
  name                   = "${var.name}-${replace(replace(each.value, ".", "-"), "/", "--")}"
  network                = var.network
  description            = "Strait: ${each.value} through gateway ${var.name}"
  dest_range             = each.value
  next_hop_instance      = google_compute_instance.this.self_link
  next_hop_instance_zone = var.zone
  priority               = var.route_priority
  tags                   = length(var.route_tags) > 0 ? var.route_tags : null
}
